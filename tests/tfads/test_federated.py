"""tfads.federated units: PSI (each party's view), the channel's messages, privacy, the split model's layers."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from tfads.federated import privacy
from tfads.federated.channel import pack, unpack
from tfads.federated.data import BatchOrder
from tfads.federated.models import ClipRows, MediaDefault, build_bottom
from tfads.federated.psi import AdParty, Blinder, MediaParty, hash_to_curve, run_local

AD_KEYS = [str(i) for i in range(0, 300)]
MEDIA_KEYS = [str(i) for i in range(200, 450)]  # overlap 200..299


def test_blinding_commutes_and_hashes_land_on_the_curve():
    a, b = Blinder(), Blinder()
    points = [hash_to_curve(k) for k in ("1", "2", "x" * 40)]
    assert a.blind(b.blind(points)) == b.blind(a.blind(points))
    assert len(set(a.blind(points))) == 3 and a.blind(points) != b.blind(points)
    with pytest.raises(ValueError, match="32 bytes"):
        Blinder(b"short")


def test_psi_gives_each_party_the_intersection_in_one_agreed_order():
    ad, ad_result, media, media_result = run_local(AD_KEYS, MEDIA_KEYS)
    expected = {str(i) for i in range(200, 300)}
    assert set(ad_result.keys) == expected and ad_result.keys == media_result.keys  # same order on both sides
    assert ad_result.keys != sorted(ad_result.keys, key=int)  # the order follows the blinded values, not the keys
    assert (ad_result.own_size, ad_result.other_size) == (300, 250)
    assert (media_result.own_size, media_result.other_size) == (250, 300)


def _view_bytes(party) -> set[bytes]:
    return {v for values in party.view.values() for v in values}


def test_each_partys_view_reveals_nothing_of_the_others_non_overlapping_keys():
    """Everything a party received, against everything it could compute itself about a key it guesses
    (the key, its hash, the hash under its own secret, and that blinded again): for the other party's keys
    outside the intersection nothing matches, so it cannot test a guess; inside, only the double-blinded
    value it shares anyway."""
    ad, ad_result, media, media_result = run_local(AD_KEYS, MEDIA_KEYS)
    for party, other_only in ((ad, [str(i) for i in range(300, 450)]), (media, [str(i) for i in range(0, 200)])):
        view = _view_bytes(party)
        assert all(len(v) == 32 for v in view)
        guesses = {k.encode() for k in other_only} | {hash_to_curve(k) for k in other_only}
        guesses |= set(party.answer([hash_to_curve(k) for k in other_only]))
        guesses |= set(party.answer(party.answer([hash_to_curve(k) for k in other_only])))
        assert not view & guesses
    # the messages a party got hold one value per key of the other party: the set size is revealed
    assert len(ad.view["media_first"]) == len(MEDIA_KEYS) and len(media.view["ad_first"]) == len(AD_KEYS)
    # and the order they arrive in is not the keys' order (each side shuffles before blinding)
    assert ad.keys != sorted(ad.keys) and isinstance(ad, AdParty) and isinstance(media, MediaParty)


def test_messages_round_trip():
    message = {"step": np.int64(3), "index": np.array([4, 1], np.int64),
               "embedding": np.arange(6, dtype=np.float32).reshape(2, 3), "keys": [b"\x00a", b"b"]}
    out = unpack(pack(message))
    assert int(out["step"]) == 3 and out["index"].tolist() == [4, 1]
    np.testing.assert_array_equal(out["embedding"], message["embedding"])
    assert list(out["keys"]) == [b"\x00a", b"b"]


def test_privacy_clip_noise_and_accounting():
    x = np.array([[3.0, 4.0], [0.3, 0.4]], np.float32)
    np.testing.assert_allclose(privacy.clip_rows(x, 1.0), [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)
    noisy = privacy.add_noise(np.zeros((20000, 2), np.float32), 0.5, np.random.default_rng(0))
    assert abs(noisy.std() - 0.5) < 0.01
    assert privacy.add_noise(x, 0.0, np.random.default_rng(0)) is x
    one = privacy.account(1.0, 1)
    assert one["rho"] == 2.0 and one["epsilon"] == pytest.approx(2 + 2 * np.sqrt(2 * np.log(1e6)))
    assert privacy.account(1.0, 10)["rho"] == 20.0 and privacy.account(0.0, 1)["epsilon"] == float("inf")
    assert privacy.max_releases(np.array([1, 1, 2, 1]), epochs=2) == 6


def test_batch_order_is_a_function_of_the_step():
    a, b = BatchOrder(1000, 100, seed=1), BatchOrder(1000, 100, seed=1)
    assert a.steps_per_epoch == 10
    first = [a.rows(s) for s in range(1, 21)]
    assert np.array_equal(b.rows(17), first[16]) and np.array_equal(b.rows(3), first[2])
    assert sorted(np.concatenate(first[:10])) == list(range(1000))  # an epoch is a permutation
    assert not np.array_equal(first[0], first[10])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        BatchOrder(10, 100, seed=0)


def test_split_model_layers_serialise(tmp_path):
    bottom = build_bottom(5, [4], 3, clip=0.5)
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32) * 10
    assert np.linalg.norm(bottom(x).numpy(), axis=1).max() <= 0.5 + 1e-6
    embedding, matched = keras.Input((3,)), keras.Input(())
    layer = MediaDefault(3)
    model = keras.Model([embedding, matched], ClipRows(2.0)(layer([embedding, matched])))
    layer.default.assign([1.0, 2.0, 2.0])
    e = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(model([e, np.array([1.0, 0.0])]).numpy(), [[1, 1, 1], [2 / 3, 4 / 3, 4 / 3]], rtol=1e-6)
    model.save(str(tmp_path / "m"))
    loaded = keras.models.load_model(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded([e, np.array([1.0, 0.0])]).numpy(), model([e, np.array([1.0, 0.0])]).numpy())
    assert MediaDefault.from_config(layer.get_config()).dim == 3
    with pytest.raises(ValueError, match="bound must be > 0"):
        ClipRows(0.0)
