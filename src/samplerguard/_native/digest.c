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
 * digest_records() is the same loop over a received frame body laid out as the frame's header
 * says, returning the digests as the text the leaves carry: the per-tensor Python work (a view
 * per tensor, a tuple per tensor, the hex) was most of what hashing a STEPS frame cost.
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

/* One digest to compute: sha256(prefix || data). */
typedef struct {
    const char *prefix;
    Py_ssize_t prefix_len;
    const char *data;
    Py_ssize_t len;
} span_t;

/* The digests of n spans into out (32 bytes each), with the GIL released; 0 on an OpenSSL
 * failure. The caller keeps every span's memory alive and unchanged meanwhile. */
static int sha256_spans(const span_t *spans, Py_ssize_t n, unsigned char *out) {
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const EVP_MD *md = EVP_sha256();
    if (ctx == NULL || md == NULL) ok = 0;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        unsigned int len = 0;
        ok = EVP_DigestInit_ex(ctx, md, NULL)
             && EVP_DigestUpdate(ctx, spans[i].prefix, (size_t)spans[i].prefix_len)
             && EVP_DigestUpdate(ctx, spans[i].data, (size_t)spans[i].len)
             && EVP_DigestFinal_ex(ctx, out + 32 * i, &len)
             && len == 32;
    }
    EVP_MD_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    return ok;
}

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
    span_t *spans = PyMem_Calloc(n ? (size_t)n : 1, sizeof(span_t));
    unsigned char *out = PyMem_Malloc(n ? (size_t)n * 32 : 1);
    if (items == NULL || spans == NULL || out == NULL) {
        PyMem_Free(items);
        PyMem_Free(spans);
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
        spans[got].prefix = items[got].prefix.buf;
        spans[got].prefix_len = items[got].prefix.len;
        spans[got].data = items[got].data.buf;
        spans[got].len = items[got].data.len;
    }
    if (!sha256_spans(spans, n, out)) {
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
    PyMem_Free(spans);
    PyMem_Free(out);
    Py_DECREF(seq);
    return result;
}

PyDoc_STRVAR(digest_records_doc,
"digest_records(body, records, /) -> list[str]\n\n"
"The canonical digests (``sha256:<hex>``) of the tensors laid out in ``body``: ``records`` is a\n"
"list of ``(base, items)``, ``items`` a tuple of ``(prefix, offset, nbytes)``, and each tensor\n"
"is ``body[base + offset : base + offset + nbytes]`` hashed after its ``prefix``. Every range\n"
"must lie within ``body`` (ValueError otherwise), at most 4096 tensors in all. Computed with\n"
"the GIL released once; the digests come back in order, as text.");

static PyObject *digest_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "digest_records() takes (body, records)");
        return NULL;
    }
    Py_buffer body;
    if (PyObject_GetBuffer(args[0], &body, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    PyObject *records = PySequence_Fast(args[1], "digest_records() takes a list of records");
    if (records == NULL) {
        PyBuffer_Release(&body);
        return NULL;
    }
    PyObject *result = NULL;
    span_t *spans = NULL;
    unsigned char *out = NULL;
    Py_ssize_t n = 0, cap = 0;
    Py_ssize_t nrec = PySequence_Fast_GET_SIZE(records);
    for (Py_ssize_t r = 0; r < nrec; r++) {
        PyObject *rec = PySequence_Fast_GET_ITEM(records, r);
        if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) != 2
            || !PyTuple_Check(PyTuple_GET_ITEM(rec, 1))) {
            PyErr_SetString(PyExc_TypeError, "digest_records() records are (base, items) tuples");
            goto done;
        }
        Py_ssize_t base = PyLong_AsSsize_t(PyTuple_GET_ITEM(rec, 0));
        if (base == -1 && PyErr_Occurred()) goto done;
        PyObject *items = PyTuple_GET_ITEM(rec, 1);
        Py_ssize_t k = PyTuple_GET_SIZE(items);
        if (n + k > MAX_ITEMS) {
            PyErr_Format(PyExc_ValueError, "digest_records() takes at most %d tensors", MAX_ITEMS);
            goto done;
        }
        if (n + k > cap) {
            cap = n + k > 2 * cap ? n + k : 2 * cap;
            span_t *grown = PyMem_Realloc(spans, (size_t)cap * sizeof(span_t));
            if (grown == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            spans = grown;
        }
        for (Py_ssize_t i = 0; i < k; i++) {
            PyObject *item = PyTuple_GET_ITEM(items, i);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3
                || !PyBytes_Check(PyTuple_GET_ITEM(item, 0))) {
                PyErr_SetString(PyExc_TypeError,
                                "digest_records() items are (prefix: bytes, offset, nbytes)");
                goto done;
            }
            Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 1));
            if (off == -1 && PyErr_Occurred()) goto done;
            Py_ssize_t len = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2));
            if (len == -1 && PyErr_Occurred()) goto done;
            if (base < 0 || off < 0 || len < 0 || base > body.len || off > body.len - base
                || len > body.len - base - off) {
                PyErr_Format(PyExc_ValueError,
                             "digest_records(): %zd bytes at %zd + %zd lie outside the %zd-byte body",
                             len, base, off, body.len);
                goto done;
            }
            /* the prefixes are held by ``items``, which ``records`` holds until the end */
            spans[n].prefix = PyBytes_AS_STRING(PyTuple_GET_ITEM(item, 0));
            spans[n].prefix_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 0));
            spans[n].data = (const char *)body.buf + base + off;
            spans[n].len = len;
            n++;
        }
    }
    out = PyMem_Malloc(n ? (size_t)n * 32 : 1);
    if (out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (!sha256_spans(spans, n, out)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to compute a SHA-256 digest");
        goto done;
    }
    result = PyList_New(n);
    if (result == NULL) goto done;
    static const char hex[] = "0123456789abcdef";
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *text = PyUnicode_New(7 + 64, 127);
        if (text == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        Py_UCS1 *dst = PyUnicode_1BYTE_DATA(text);
        memcpy(dst, "sha256:", 7);
        for (int b = 0; b < 32; b++) {
            dst[7 + 2 * b] = (Py_UCS1)hex[out[32 * i + b] >> 4];
            dst[8 + 2 * b] = (Py_UCS1)hex[out[32 * i + b] & 15];
        }
        PyList_SET_ITEM(result, i, text);
    }
done:
    PyMem_Free(spans);
    PyMem_Free(out);
    Py_DECREF(records);
    PyBuffer_Release(&body);
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
    {"digest_records", (PyCFunction)(void (*)(void))digest_records, METH_FASTCALL,
     digest_records_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "samplerguard._digest",
    "Batched SHA-256 (OpenSSL) and bulk copies with the GIL released once per call.", -1, methods,
};

PyMODINIT_FUNC PyInit__digest(void) { return PyModule_Create(&module); }
