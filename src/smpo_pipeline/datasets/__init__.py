"""Kedro datasets of the project (referenced by type in ``conf/*/catalog.yml``)."""

from smpo_pipeline.datasets.diffusers_pipeline import DiffusersPipelineDataset, NotTrained
from smpo_pipeline.datasets.parquet_shards import ParquetShardsDataset
from smpo_pipeline.datasets.parquet_stream import ParquetStreamDataset
from smpo_pipeline.datasets.pretrained_directory import PretrainedDirectoryDataset
from smpo_pipeline.datasets.prompt_list import PromptListDataset
from smpo_pipeline.datasets.unet_replicas import UNetReplicasDataset

__all__ = ["DiffusersPipelineDataset", "NotTrained", "ParquetShardsDataset", "ParquetStreamDataset",
           "PretrainedDirectoryDataset", "PromptListDataset",
           "UNetReplicasDataset"]
