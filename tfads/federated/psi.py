"""Private set intersection of two parties' join keys by commutative ECDH blinding (DH-PSI) on Curve25519.

Each party hashes its keys to points of Curve25519 and multiplies them by a secret scalar: X25519 from
``cryptography`` computes ``x([k] P)`` for any point ``P`` given by its x-coordinate, and scalar
multiplication commutes, so ``[b]([a] H(x)) = [a]([b] H(x))``: two keys match exactly when their
double-blinded values do. The exchange (``AdParty`` starts; the media party answers)::

    ad -> media    A1 = [a] H(x), x in ad keys (shuffled)
    media -> ad    B1 = [b] H(y), y in media keys (shuffled);  A2 = [b] A1, in A1's order
    ad -> media    B2 = [a] B1, in B1's order

Each side then knows the double-blinded values of its own keys (A2, resp. B2) and the set of the other's,
so it learns which of its own keys are in the intersection and the size of the other's set, nothing about
the other's keys outside it: those it sees only blinded by the other's secret (DDH on Curve25519 in the
random-oracle model; semi-honest parties: a party that lies about its set is not detected). The agreed
order of the intersection is the sort order of the double-blinded values, which both sides hold.

Hash to curve: SHA-512 of a domain tag, a counter and the key, reduced mod p = 2^255 - 19, the first
counter whose value is the x-coordinate of a point on the curve (not its twist; try-and-increment, not
constant time: it runs on a party's own keys only). X25519 clamps a scalar to a multiple of 8, so blinded
points lie in the prime-order subgroup.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

P25519 = 2**255 - 19
A25519 = 486662
DOMAIN = b"tfads-psi-v1"
POINT_BYTES = 32


@functools.lru_cache(maxsize=1 << 20)
def hash_to_curve(key: str, domain: bytes = DOMAIN) -> bytes:
    """The 32-byte x-coordinate (little endian) of a point of Curve25519 for ``key`` (cached: a party
    re-runs PSI after the other restarts; the Euler test costs ~0.3 ms a try in Python)."""
    data = key.encode()
    for counter in range(1 << 16):
        digest = hashlib.sha512(domain + counter.to_bytes(4, "little") + data).digest()
        u = int.from_bytes(digest, "little") % P25519
        rhs = (u * u * u + A25519 * u * u + u) % P25519
        if u and pow(rhs, (P25519 - 1) // 2, P25519) == 1:  # a square: on the curve, not the twist
            return u.to_bytes(POINT_BYTES, "little")
    raise RuntimeError(f"hash_to_curve: no curve point for key {key!r}")  # probability 2^-65536


class Blinder:
    """A party's secret scalar: ``blind(points)`` multiplies each point by it."""

    def __init__(self, secret: bytes | None = None) -> None:
        if secret is not None and len(secret) != POINT_BYTES:
            raise ValueError(f"Blinder: secret must be {POINT_BYTES} bytes, got {len(secret)}")
        self._key = X25519PrivateKey.from_private_bytes(secret) if secret else X25519PrivateKey.generate()

    def blind(self, points: Iterable[bytes]) -> list[bytes]:
        """``[k] P`` for each point (x-coordinates); ValueError for a low-order point."""
        return [self._key.exchange(X25519PublicKey.from_public_bytes(p)) for p in points]


@dataclass(frozen=True)
class Intersection:
    """What PSI gives a party: its own keys in the intersection, in the agreed order, and the set sizes."""

    keys: list[str]  # own keys in the intersection, in the agreed order
    own_size: int
    other_size: int

    @property
    def index(self) -> dict[str, int]:
        """Own key -> position in the agreed order."""
        return {k: i for i, k in enumerate(self.keys)}


def _shuffled(keys: Iterable[str]) -> list[str]:
    out = sorted(set(keys))
    secrets.SystemRandom().shuffle(out)  # the order sent must not follow the keys' own order
    return out


def _agree(own: Sequence[str], own_double: Sequence[bytes], other_double: Iterable[bytes]) -> Intersection:
    theirs = set(other_double)
    matched = sorted((d, k) for k, d in zip(own, own_double, strict=True) if d in theirs)
    return Intersection([k for _, k in matched], len(own), len(theirs))


class PsiParty:
    """One side of the exchange (module docstring); ``view`` records every message it received.

    Args:
      keys: this party's join keys (strings; duplicates are dropped).
      secret: a 32-byte scalar (default: fresh random; a fixed one only for tests).
    """

    def __init__(self, keys: Iterable[str], *, secret: bytes | None = None) -> None:
        self.keys = _shuffled(str(k) for k in keys)
        self._blinder = Blinder(secret)
        self.view: dict[str, list[bytes]] = {}

    def first(self) -> list[bytes]:
        """``[own secret] H(key)`` of every own key, in this party's (shuffled) order."""
        return self._blinder.blind(hash_to_curve(k) for k in self.keys)

    def answer(self, theirs: Sequence[bytes]) -> list[bytes]:
        """The other party's first message blinded again, in its order."""
        return self._blinder.blind(theirs)


class AdParty(PsiParty):
    """The side that starts (the label owner)."""

    def finish(self, media_first: Sequence[bytes], own_double: Sequence[bytes]) -> tuple[list[bytes], Intersection]:
        """From the media party's reply (its first message and ours blinded again): our answer to send,
        and our intersection."""
        self.view = {"media_first": list(media_first), "own_double": list(own_double)}
        media_double = self.answer(media_first)
        return media_double, _agree(self.keys, own_double, media_double)


class MediaParty(PsiParty):
    """The side that answers (the feature owner)."""

    def reply(self, ad_first: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Our first message and the ad party's first message blinded again."""
        self.view = {"ad_first": list(ad_first)}
        self._ad_double = self.answer(ad_first)
        return self.first(), self._ad_double

    def finish(self, own_double: Sequence[bytes]) -> Intersection:
        """Our intersection from our keys blinded by both (the ad party's answer) and the ad party's
        keys blinded by both (computed in :meth:`reply`)."""
        self.view["own_double"] = list(own_double)
        return _agree(self.keys, own_double, self._ad_double)


def run_local(ad_keys: Iterable[str], media_keys: Iterable[str]) -> tuple[AdParty, Intersection, MediaParty,
                                                                          Intersection]:
    """The whole exchange in one process (tests, benchmarks): both parties and their intersections."""
    ad, media = AdParty(ad_keys), MediaParty(media_keys)
    media_first, ad_double = media.reply(ad.first())
    media_double, ad_result = ad.finish(media_first, ad_double)
    return ad, ad_result, media, media.finish(media_double)
