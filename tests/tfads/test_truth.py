"""The generator's truth joins scored rows on the schema's key field, whatever the logs call it."""

import numpy as np
import pandas as pd
import pytest

from tfads.truth import TRUTH_KEY, attach_truth, read_truth


def test_truth_joins_on_the_users_key_name(logs_dir):
    truth = read_truth(logs_dir)
    picked = truth.sample(50, random_state=0)
    scored = pd.DataFrame({"impression_id": [*picked[TRUTH_KEY], "not-in-the-truth"], "ctr": np.arange(51.0)})
    joined = attach_truth(scored, logs_dir, "impression_id")
    assert list(joined["impression_id"]) == list(scored["impression_id"]) and TRUTH_KEY not in joined
    np.testing.assert_allclose(joined["true_ctr"][:50], picked["p_ctr"])
    np.testing.assert_allclose(joined["true_ctcvr"][:50], picked["p_ctr"] * picked["p_cvr"])
    assert np.isnan(joined["true_ctr"].iloc[50])
    with pytest.raises(ValueError, match="no key column 'trace_id'"):
        attach_truth(scored, logs_dir, "trace_id")
