"""NIST SP 800-90A Rev. 1 deterministic random bit generators on ``cryptography``'s primitives.

* :class:`HmacDrbg`: HMAC_DRBG with SHA-256 (§10.1.2).
* :class:`CtrDrbg`: CTR_DRBG with AES-256, with or without the derivation function (§10.2.1).

Both implement instantiate (the constructor), reseed, generate, prediction resistance,
additional input and the reseed counter limit. They are validated against every SHA-256 and
AES-256 case of NIST's CAVP response files (``tests/unit/rng/test_drbg_cavp.py``).

CTR_DRBG's generate loop is "V = V + 1; output AES(Key, V)" (§10.2.1.5.1 step 4), which is
exactly the AES-CTR keystream starting at counter V + 1 with a full 128-bit counter
(ctr_len = blocklen is what §10.2.1 allows for AES). We therefore ask ``cryptography`` for that
keystream in one call per generate request instead of one AES call per block: same bits, three
orders of magnitude faster. The per-request cap of 2^19 bits (§10.2.1, Table 3) still holds; bulk
callers use :meth:`Drbg.random_bytes`, which issues as many standard-sized requests as needed.

Nothing here logs, and neither the repr nor any exception message carries key, V or seed bytes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from samplerguard.errors import MalformedInputError, SamplerGuardError

__all__ = [
    "MAX_BYTES_PER_REQUEST",
    "MAX_RESEED_INTERVAL",
    "CtrDrbg",
    "Drbg",
    "DrbgError",
    "EntropySource",
    "HmacDrbg",
    "ReseedRequiredError",
]

#: ``get_entropy(n) -> n bytes`` of full-entropy input (e.g. ``os.urandom``).
EntropySource = Callable[[int], bytes]

#: max_number_of_bits_per_request = 2^19 for both mechanisms (Tables 2 and 3).
MAX_BYTES_PER_REQUEST = (1 << 19) // 8
#: reseed_interval ≤ 2^48 (Tables 2 and 3).
MAX_RESEED_INTERVAL = 1 << 48
#: max_length of entropy input, personalization string and additional input: 2^35 bits.
_MAX_INPUT_BYTES = (1 << 35) // 8
_SECURITY_STRENGTH = 32  # bytes; both mechanisms here support 256-bit strength


class DrbgError(SamplerGuardError):
    """The DRBG cannot serve the request (it is uninstantiated or needs entropy it lacks)."""


class ReseedRequiredError(DrbgError):
    """The reseed counter passed ``reseed_interval`` and no entropy source is attached."""


def _check_len(name: str, value: bytes, minimum: int = 0, maximum: int = _MAX_INPUT_BYTES) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MalformedInputError(f"{name} must be bytes, got {type(value).__name__}")
    n = len(value)
    if n < minimum:
        raise MalformedInputError(f"{name} is {n} bytes; at least {minimum} are required")
    if n > maximum:
        raise MalformedInputError(f"{name} is {n} bytes; at most {maximum} are allowed")


class Drbg(abc.ABC):
    """The SP 800-90A function envelope shared by both mechanisms (§9)."""

    #: Short algorithm name, e.g. ``"HMAC_DRBG(SHA-256)"``.
    name: str = ""

    def __init__(
        self,
        *,
        reseed_interval: int,
        entropy_source: EntropySource | None,
        prediction_resistance: bool,
    ) -> None:
        if not 1 <= reseed_interval <= MAX_RESEED_INTERVAL:
            raise MalformedInputError(
                f"reseed_interval {reseed_interval} is outside 1..2^48 (SP 800-90A Table 2/3)"
            )
        if prediction_resistance and entropy_source is None:
            raise MalformedInputError("prediction resistance needs an entropy source")
        self._reseed_interval = reseed_interval
        self._entropy_source = entropy_source
        self._prediction_resistance = prediction_resistance
        self._reseed_counter = 0
        self._instantiated = False

    # -- mechanism-specific ------------------------------------------------------------------

    @abc.abstractmethod
    def _reseed_algorithm(self, entropy_input: bytes, additional_input: bytes) -> None: ...

    @abc.abstractmethod
    def _generate_algorithm(self, n: int, additional_input: bytes) -> bytes: ...

    @abc.abstractmethod
    def _wipe(self) -> None: ...

    @property
    @abc.abstractmethod
    def _entropy_bytes(self) -> int:
        """How many entropy bytes a reseed asks the source for."""

    # -- the envelope ------------------------------------------------------------------------

    @property
    def reseed_counter(self) -> int:
        return self._reseed_counter

    @property
    def reseed_interval(self) -> int:
        return self._reseed_interval

    @property
    def prediction_resistance(self) -> bool:
        return self._prediction_resistance

    def _require_instantiated(self) -> None:
        if not self._instantiated:
            raise DrbgError(f"{self.name} is uninstantiated")

    def _from_source(self) -> bytes:
        if self._entropy_source is None:
            raise ReseedRequiredError(
                f"{self.name} needs a reseed (counter {self._reseed_counter} > interval "
                f"{self._reseed_interval}) and has no entropy source"
            )
        want = self._entropy_bytes
        got = self._entropy_source(want)
        if not isinstance(got, bytes) or len(got) != want:
            raise DrbgError(
                f"the entropy source returned a wrong-sized answer (wanted {want} bytes)"
            )
        return got

    def reseed(self, entropy_input: bytes | None = None, additional_input: bytes = b"") -> None:
        """Reseed (§9.2). Without ``entropy_input`` the attached entropy source is asked."""
        self._require_instantiated()
        _check_len("additional_input", additional_input)
        if entropy_input is None:
            entropy_input = self._from_source()
        self._check_entropy(entropy_input)
        self._reseed_algorithm(bytes(entropy_input), bytes(additional_input))
        self._reseed_counter = 1

    def generate(
        self,
        n: int,
        additional_input: bytes = b"",
        *,
        prediction_resistance: bool = False,
    ) -> bytes:
        """Return ``n`` pseudorandom bytes (§9.3.1), ``n ≤ 2^16``."""
        if not 0 <= n <= MAX_BYTES_PER_REQUEST:
            raise MalformedInputError(
                f"a generate request of {n} bytes is outside 0..{MAX_BYTES_PER_REQUEST} "
                "(max_number_of_bits_per_request = 2^19)"
            )
        out = bytearray(n)
        self._request(memoryview(out), additional_input, prediction_resistance)
        return bytes(out)

    def _request(
        self, out: memoryview, additional_input: bytes, prediction_resistance: bool
    ) -> None:
        self._require_instantiated()
        n = len(out)
        if n > MAX_BYTES_PER_REQUEST:
            raise MalformedInputError(
                f"a generate request of {n} bytes exceeds max_number_of_bits_per_request "
                f"(2^19 bits = {MAX_BYTES_PER_REQUEST} bytes)"
            )
        _check_len("additional_input", additional_input)
        if prediction_resistance and not self._prediction_resistance:
            raise DrbgError(f"{self.name} was instantiated without prediction resistance")
        additional = bytes(additional_input)
        # (7): reseed when prediction resistance is asked for or the counter is exhausted;
        # the additional input goes into the reseed and is not used again (step 7.4).
        if prediction_resistance or self._reseed_counter > self._reseed_interval:
            self._reseed_algorithm(self._from_source(), additional)
            self._reseed_counter = 1
            additional = b""
        self._generate_into(out, additional)
        self._reseed_counter += 1

    def _generate_into(self, out: memoryview, additional_input: bytes) -> None:
        out[:] = self._generate_algorithm(len(out), additional_input)

    def random_bytes(self, n: int) -> bytearray:
        """``n`` bytes from as many standard-sized generate requests as it takes."""
        if n < 0:
            raise MalformedInputError(f"cannot generate {n} bytes")
        out = bytearray(n)
        self.random_bytes_into(out)
        return out

    def random_bytes_into(self, buf: bytearray | memoryview) -> None:
        """Fill ``buf`` with generate requests of at most 2^16 bytes each."""
        view = memoryview(buf).cast("B")
        for start in range(0, len(view), MAX_BYTES_PER_REQUEST):
            self._request(view[start : start + MAX_BYTES_PER_REQUEST], b"", False)

    def uninstantiate(self) -> None:
        """Forget the internal state (§9.4). Later calls raise :class:`DrbgError`."""
        self._wipe()
        self._instantiated = False

    def _check_entropy(self, entropy_input: bytes) -> None:
        _check_len("entropy_input", entropy_input, minimum=_SECURITY_STRENGTH)

    def __repr__(self) -> str:
        # Never the state: only what is public.
        state = "instantiated" if self._instantiated else "uninstantiated"
        return f"<{type(self).__name__} {self.name} {state} reseed_counter={self._reseed_counter}>"

    __str__ = __repr__

    def __getstate__(self) -> object:
        raise TypeError(f"{type(self).__name__} holds secret state and cannot be pickled")


# --- HMAC_DRBG --------------------------------------------------------------------------------


class HmacDrbg(Drbg):
    """HMAC_DRBG with SHA-256 (SP 800-90A §10.1.2), 256-bit security strength.

    The constructor is Instantiate (§10.1.2.3): ``entropy_input`` ≥ 32 bytes, ``nonce`` ≥ 16 bytes.
    """

    name = "HMAC_DRBG(SHA-256)"
    _OUTLEN = 32

    def __init__(
        self,
        entropy_input: bytes,
        nonce: bytes,
        personalization_string: bytes = b"",
        *,
        reseed_interval: int = MAX_RESEED_INTERVAL,
        entropy_source: EntropySource | None = None,
        prediction_resistance: bool = False,
    ) -> None:
        super().__init__(
            reseed_interval=reseed_interval,
            entropy_source=entropy_source,
            prediction_resistance=prediction_resistance,
        )
        self._check_entropy(entropy_input)
        _check_len("nonce", nonce, minimum=_SECURITY_STRENGTH // 2)
        _check_len("personalization_string", personalization_string)
        self._key = b"\x00" * self._OUTLEN
        self._v = b"\x01" * self._OUTLEN
        self._update(bytes(entropy_input) + bytes(nonce) + bytes(personalization_string))
        self._reseed_counter = 1
        self._instantiated = True

    @property
    def _entropy_bytes(self) -> int:
        return _SECURITY_STRENGTH

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        h = hmac.HMAC(key, hashes.SHA256())
        h.update(data)
        return h.finalize()

    def _update(self, provided: bytes) -> None:
        # §10.1.2.2
        self._key = self._hmac(self._key, self._v + b"\x00" + provided)
        self._v = self._hmac(self._key, self._v)
        if provided:
            self._key = self._hmac(self._key, self._v + b"\x01" + provided)
            self._v = self._hmac(self._key, self._v)

    def _reseed_algorithm(self, entropy_input: bytes, additional_input: bytes) -> None:
        self._update(entropy_input + additional_input)

    def _generate_algorithm(self, n: int, additional_input: bytes) -> bytes:
        if additional_input:
            self._update(additional_input)
        h = hmac.HMAC(self._key, hashes.SHA256())
        v = self._v
        blocks = []
        for _ in range(-(-n // self._OUTLEN)):
            hh = h.copy()
            hh.update(v)
            v = hh.finalize()
            blocks.append(v)
        self._v = v
        self._update(additional_input)
        return b"".join(blocks)[:n]

    def _wipe(self) -> None:
        self._key = b""
        self._v = b""


# --- CTR_DRBG ---------------------------------------------------------------------------------

_AES_KEYLEN = 32
_BLOCKLEN = 16
_SEEDLEN = _AES_KEYLEN + _BLOCKLEN  # 48 bytes = 384 bits
_DF_KEY = bytes(range(_AES_KEYLEN))  # §10.3.2 step 8: leftmost keylen bits of 0x00010203...


_ZEROS = bytes(MAX_BYTES_PER_REQUEST + _BLOCKLEN)


def _ctr_encryptor(key: bytes, v: bytes) -> tuple[CipherContext, int]:
    """An AES-CTR context whose keystream is AES(key, V+1) ‖ AES(key, V+2) ‖ …, and V+1."""
    start = (int.from_bytes(v, "big") + 1) % (1 << 128)
    return Cipher(algorithms.AES(key), modes.CTR(start.to_bytes(16, "big"))).encryptor(), start


def _ctr_keystream(key: bytes, v: bytes, n: int) -> tuple[bytes, bytes]:
    """AES(key, V+1) ‖ AES(key, V+2) ‖ … for ``n`` bytes, and the last counter used.

    This is the CTR_DRBG block loop (§10.2.1.2 step 2, §10.2.1.5.1 step 4) done by AES-CTR."""
    enc, start = _ctr_encryptor(key, v)
    stream = enc.update(memoryview(_ZEROS)[:n])
    last = (start + -(-n // _BLOCKLEN) - 1) % (1 << 128)
    return stream, last.to_bytes(16, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _bcc(key: bytes, data: bytes) -> bytes:
    """BCC (§10.3.3): CBC-MAC with a zero IV, i.e. the last block of AES-CBC."""
    enc = Cipher(algorithms.AES(key), modes.CBC(b"\x00" * _BLOCKLEN)).encryptor()
    return enc.update(data)[-_BLOCKLEN:]


def _block_cipher_df(input_string: bytes, n: int = _SEEDLEN) -> bytes:
    """Block_Cipher_df (§10.3.2) returning ``n`` bytes."""
    s = len(input_string).to_bytes(4, "big") + n.to_bytes(4, "big") + input_string + b"\x80"
    s += b"\x00" * (-len(s) % _BLOCKLEN)
    temp = b""
    i = 0
    while len(temp) < _AES_KEYLEN + _BLOCKLEN:
        iv = i.to_bytes(4, "big") + b"\x00" * (_BLOCKLEN - 4)
        temp += _bcc(_DF_KEY, iv + s)
        i += 1
    key, x = temp[:_AES_KEYLEN], temp[_AES_KEYLEN : _AES_KEYLEN + _BLOCKLEN]
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - the df's own loop
    out = b""
    while len(out) < n:
        x = enc.update(x)
        out += x
    return out[:n]


class CtrDrbg(Drbg):
    """CTR_DRBG with AES-256 (SP 800-90A §10.2.1), 256-bit security strength.

    ``use_df=True`` (the default) uses the block cipher derivation function: ``entropy_input``
    ≥ 32 bytes, ``nonce`` ≥ 16 bytes. ``use_df=False`` requires full-entropy input of exactly
    seedlen = 48 bytes, takes no nonce, and personalization/additional inputs of ≤ 48 bytes.
    """

    name = "CTR_DRBG(AES-256)"

    def __init__(
        self,
        entropy_input: bytes,
        nonce: bytes = b"",
        personalization_string: bytes = b"",
        *,
        use_df: bool = True,
        reseed_interval: int = MAX_RESEED_INTERVAL,
        entropy_source: EntropySource | None = None,
        prediction_resistance: bool = False,
    ) -> None:
        super().__init__(
            reseed_interval=reseed_interval,
            entropy_source=entropy_source,
            prediction_resistance=prediction_resistance,
        )
        self._use_df = use_df
        self._check_entropy(entropy_input)
        if use_df:
            _check_len("nonce", nonce, minimum=_SECURITY_STRENGTH // 2)
            _check_len("personalization_string", personalization_string)
            seed_material = _block_cipher_df(
                bytes(entropy_input) + bytes(nonce) + bytes(personalization_string)
            )
        else:
            _check_len("personalization_string", personalization_string, maximum=_SEEDLEN)
            pers = bytes(personalization_string).ljust(_SEEDLEN, b"\x00")
            seed_material = _xor(bytes(entropy_input), pers)
        self._key = b"\x00" * _AES_KEYLEN
        self._v = b"\x00" * _BLOCKLEN
        self._update(seed_material)
        self._reseed_counter = 1
        self._instantiated = True

    @property
    def use_df(self) -> bool:
        return self._use_df

    @property
    def _entropy_bytes(self) -> int:
        return _SECURITY_STRENGTH if self._use_df else _SEEDLEN

    def _check_entropy(self, entropy_input: bytes) -> None:
        if self._use_df:
            super()._check_entropy(entropy_input)
        else:
            _check_len("entropy_input", entropy_input, minimum=_SEEDLEN, maximum=_SEEDLEN)

    def _update(self, provided: bytes) -> None:
        # §10.2.1.2: three blocks of keystream XOR the provided data → new Key ‖ V.
        temp, _ = _ctr_keystream(self._key, self._v, _SEEDLEN)
        temp = _xor(temp, provided)
        self._key, self._v = temp[:_AES_KEYLEN], temp[_AES_KEYLEN:]

    def _condition(self, data: bytes) -> bytes:
        if self._use_df:
            return _block_cipher_df(data)
        if len(data) > _SEEDLEN:
            raise MalformedInputError(
                f"without the derivation function additional input is at most {_SEEDLEN} "
                f"bytes, got {len(data)}"
            )
        return data.ljust(_SEEDLEN, b"\x00")

    def _reseed_algorithm(self, entropy_input: bytes, additional_input: bytes) -> None:
        if self._use_df:
            seed_material = _block_cipher_df(entropy_input + additional_input)
        else:
            seed_material = _xor(entropy_input, self._condition(additional_input))
        self._update(seed_material)

    def _generate_algorithm(self, n: int, additional_input: bytes) -> bytes:
        out = bytearray(n)
        self._generate_into(memoryview(out), additional_input)
        return bytes(out)

    def _generate_into(self, out: memoryview, additional_input: bytes) -> None:
        if additional_input:
            additional = self._condition(additional_input)
            self._update(additional)
        else:
            additional = b""
        n = len(out)
        if n % _BLOCKLEN:
            stream, self._v = _ctr_keystream(self._key, self._v, n)
            out[:] = stream
            self._update(additional or bytes(_SEEDLEN))
            return
        # Whole blocks: the output (step 4) and the final update's three blocks (step 6, whose
        # counter continues from the output's last one) are one keystream, written in place.
        enc, _ = _ctr_encryptor(self._key, self._v)
        enc.update_into(memoryview(_ZEROS)[:n], out)
        temp = enc.update(memoryview(_ZEROS)[:_SEEDLEN])
        if additional:
            temp = _xor(temp, additional)
        self._key, self._v = temp[:_AES_KEYLEN], temp[_AES_KEYLEN:]

    def _wipe(self) -> None:
        self._key = b""
        self._v = b""
