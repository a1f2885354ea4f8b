"""Training rows: schema and validation, sources, tokenization, curriculum, Grain pipeline.

data = make_dataset(DataConfig(path="train.jsonl", batch_size=8), tokenizer,
                    answer_check=parse_gold)
iterator = iter(data.batches)  # checkpoint with iterator.get_state() / set_state()
"""

from g2rpo_jax.data.config import (
    HUB_PREFIX,
    DataConfig,
    FieldMap,
    Order,
    SourceFormat,
    hub_id,
    source_fields,
)
from g2rpo_jax.data.curriculum import DifficultySource
from g2rpo_jax.data.load import Loaded, load_rows
from g2rpo_jax.data.pipeline import HOST_FIELDS, DataStats, TrainData, make_dataset
from g2rpo_jax.data.schema import AnswerCheck, DataError, Row

__all__ = [
    "HOST_FIELDS",
    "HUB_PREFIX",
    "AnswerCheck",
    "DataConfig",
    "DataError",
    "DataStats",
    "DifficultySource",
    "FieldMap",
    "Loaded",
    "Order",
    "Row",
    "SourceFormat",
    "TrainData",
    "hub_id",
    "load_rows",
    "make_dataset",
    "source_fields",
]
