/*
 * samplerguard._digest: SHA-256 over many (prefix, data) pairs in one call, with the GIL
 * released once for all of them.
 *
 * The sidecar hashes every tensor of every step record it ingests (the canonical digest is
 * sha256(prefix || bytes), see samplerguard.commitment.digest). hashlib releases the GIL once
 * per update() call, so a STEPS frame of 8 records cost 8 release/reacquire cycles, and on a
 * small node each reacquisition waited for the connection thread. This module hashes a whole
 * frame's tensors per release. The hash itself is OpenSSL's (EVP, the same libcrypto as
 * hashlib): nothing cryptographic is implemented here, only the loop.
 *
 * Every buffer is acquired (and so pinned) before the GIL is released and released after it is
 * taken back, so a caller cannot resize or free one while it is hashed.
 *
 * copy_into() is the ingest's other bulk step: a received frame body copied into the store's
 * staging buffer, with the GIL released (a slice assignment holds it for the whole copy, and
 * the digester thread waited on it to append its leaves).
 */
#include <string.h>
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>

#define MAX_ITEMS 4096

typedef struct {
    Py_buffer prefix;
    Py_buffer data;
} item_t;

static void release_items(item_t *items, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        PyBuffer_Release(&items[i].prefix);
        PyBuffer_Release(&items[i].data);
    }
}

PyDoc_STRVAR(sha256_many_doc,
"sha256_many(items, /) -> list[bytes]\n\n"
"The 32-byte SHA-256 of prefix || data for every (prefix, data) pair of ``items`` (a list or\n"
"tuple of at most 4096 pairs of C-contiguous buffers), computed with the GIL released once.");

static PyObject *sha256_many(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "sha256_many() takes a list or tuple of pairs");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_ITEMS) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "sha256_many() takes at most %d pairs", MAX_ITEMS);
    }
    item_t *items = PyMem_Calloc(n ? (size_t)n : 1, sizeof(item_t));
    unsigned char *out = PyMem_Malloc(n ? (size_t)n * 32 : 1);
    if (items == NULL || out == NULL) {
        PyMem_Free(items);
        PyMem_Free(out);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    for (; got < n; got++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, got);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "sha256_many() items are (prefix, data) tuples");
            goto done;
        }
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 0), &items[got].prefix, PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(pair, 1), &items[got].data, PyBUF_C_CONTIGUOUS) < 0) {
            PyBuffer_Release(&items[got].prefix);
            goto done;
        }
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const EVP_MD *md = EVP_sha256();
    if (ctx == NULL || md == NULL) {
        ok = 0;
    }
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        unsigned int len = 0;
        ok = EVP_DigestInit_ex(ctx, md, NULL)
             && EVP_DigestUpdate(ctx, items[i].prefix.buf, (size_t)items[i].prefix.len)
             && EVP_DigestUpdate(ctx, items[i].data.buf, (size_t)items[i].data.len)
             && EVP_DigestFinal_ex(ctx, out + 32 * i, &len)
             && len == 32;
    }
    EVP_MD_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to compute a SHA-256 digest");
        goto done;
    }
    result = PyList_New(n);
    if (result == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyBytes_FromStringAndSize((const char *)out + 32 * i, 32);
        if (d == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, d);
    }
done:
    release_items(items, got);
    PyMem_Free(items);
    PyMem_Free(out);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(copy_into_doc,
"copy_into(dst, offset, src, /) -> int\n\n"
"Copy the bytes of ``src`` into the writable buffer ``dst`` at ``offset`` with the GIL\n"
"released; returns the number of bytes copied (all of ``src``, or ValueError when they do\n"
"not fit).");

static PyObject *copy_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "copy_into() takes (dst, offset, src)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    Py_buffer dst, src;
    if (PyObject_GetBuffer(args[0], &dst, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[2], &src, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    PyObject *result = NULL;
    if (offset < 0 || offset > dst.len || src.len > dst.len - offset) {
        PyErr_Format(PyExc_ValueError, "copy_into(): %zd bytes do not fit at offset %zd of %zd",
                     src.len, offset, dst.len);
    } else {
        Py_BEGIN_ALLOW_THREADS
        memcpy((char *)dst.buf + offset, src.buf, (size_t)src.len);
        Py_END_ALLOW_THREADS
        result = PyLong_FromSsize_t(src.len);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"sha256_many", sha256_many, METH_O, sha256_many_doc},
    {"copy_into", (PyCFunction)(void (*)(void))copy_into, METH_FASTCALL, copy_into_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "samplerguard._digest",
    "Batched SHA-256 (OpenSSL) and bulk copies with the GIL released once per call.", -1, methods,
};

PyMODINIT_FUNC PyInit__digest(void) { return PyModule_Create(&module); }
