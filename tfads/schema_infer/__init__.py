"""Schema inference: a starter ``input: table`` schema guessed from a sample of CSV, Parquet or JSON-lines files.

``read_sample`` reads the first rows, ``infer_schema`` guesses each column's type, feature kind and role,
``render_schema`` writes the guess as commented YAML for the user to edit (``tfads schema infer``).
"""

from tfads.schema_infer.guess import Guess, Profile, infer_schema, profile_table
from tfads.schema_infer.render import render_schema
from tfads.schema_infer.sample import Sample, SampleError, expand_inputs, read_sample

__all__ = ["Guess", "Profile", "Sample", "SampleError", "expand_inputs", "infer_schema", "profile_table",
           "read_sample", "render_schema"]
