"""Random-access source over a TFDS dataset stored as ArrayRecord, read without TensorFlow.

`TfdsSource` wraps `tfds.builder(...).as_data_source(...)`: tfds decodes the stored examples with
numpy and protobuf only, so training processes never import TensorFlow. Only datasets prepared in
the `array_record` file format can be read this way (the default `tfrecord` format has no random
access).

Preparing a dataset runs its builder once and is a separate step:

    tfds build eurosat/all --file_format=array_record --data_dir=/data/tfds
    # or, in Python:
    tfds.builder("eurosat/all", data_dir="/data/tfds").download_and_prepare(
            file_format="array_record")

Writing ArrayRecord needs no TensorFlow either: tfds serializes examples with its own copy of the
`tf.train.Example` protos and writes them with the `array_record` package. TensorFlow is needed
only when the builder's code uses it; many catalogue builders (`eurosat` among them) and tfds's
download/extract manager use `tf.io.gfile`, so prepare those once in an environment that has
TensorFlow and copy the resulting directory. A builder of your own whose `_generate_examples` reads
files with numpy/rasterio prepares in the eofm environment as is (`tests/test_tfds_source.py` has
one).

Each item is a sample as described in `eofm.data.spec`:

    source = TfdsSource("eurosat/all", "train", data_dir="/data/tfds",
                        images={"s2": ("sentinel2", SensorSpec.full("sentinel2_l1c"))})
    source[0]  # {"s2": f32[64, 64, 13], "s2_valid": bool[64, 64, 13], "label": int64[]}
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from eofm.data import spec as spec_lib
from eofm.data import validity

_ARRAY_RECORD = "array_record"
_DEFAULT_LABELS = types.MappingProxyType({"label": "label"})


class TfdsSource:
    """Grain random-access data source over one split of an ArrayRecord TFDS dataset.

    Attributes:
        name: TFDS name, optionally with config and version ("eurosat/all:2.0.0").
        split: TFDS split expression ("train", "train[:80%]", ...).
        version: version of the prepared dataset that is read ("2.0.0").
        data_dir: TFDS data directory; None is the tfds default.
        specs: sample key -> `SensorSpec` of each image key.
        label_names: sample key -> class names, for labels stored as `ClassLabel` (or a sequence
            of them); None when no label has class names.
    """

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: str | None,
        images: Mapping[str, tuple[str, spec_lib.SensorSpec]],
        labels: Mapping[str, str] = _DEFAULT_LABELS,
        nodata: float | None = None,
    ):
        """Opens the dataset and checks the requested features against its metadata.

        Args:
            name: TFDS name, optionally with config and version.
            split: TFDS split expression.
            data_dir: TFDS data directory; None is the tfds default.
            images: sample key -> (TFDS feature key, `SensorSpec` of its channels in stored order).
            labels: sample key -> TFDS feature key, returned as numpy values.
            nodata: stored value that marks missing pixels in every image; None marks only
                non-finite values. TFDS datasets are derived products, so the fill value of the
                native product (`Band.nodata`) is not assumed.
        """
        self.name = name
        self.split = split
        self.data_dir = data_dir
        self.nodata = nodata
        self.specs = {key: spec for key, (_, spec) in images.items()}
        self._image_features = {key: feature for key, (feature, _) in images.items()}
        self._label_features = dict(labels)

        builder = _prepared_builder(name, split, data_dir)
        self.version = str(builder.info.version)
        features = builder.info.features
        for key, feature_key in {**self._image_features, **self._label_features}.items():
            if feature_key not in features:
                raise KeyError(
                    f"TFDS dataset {name!r} has no feature {feature_key!r} (for sample key"
                    f" {key!r}); available features: {', '.join(sorted(features))}"
                )
        for key, feature_key in self._image_features.items():
            shape = features[feature_key].shape
            if shape and shape[-1] is not None:
                # Fails on construction when the stored channel count is static and wrong;
                # check_band_count only reads the trailing dimension.
                spec_lib.check_band_count(
                    np.empty((0, shape[-1])), self.specs[key], where=self._where(feature_key)
                )

        label_names = {
            key: names
            for key, feature_key in self._label_features.items()
            if (names := _class_names(features[feature_key])) is not None
        }
        self.label_names = label_names or None
        self._source = builder.as_data_source(split=split, file_format=_ARRAY_RECORD)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = self._source[index]
        sample = {}
        for key, feature_key in self._image_features.items():
            array = np.asarray(example[feature_key])
            where = f"{self._where(feature_key)} example {index}"
            spec_lib.check_band_count(array, self.specs[key], where=where)
            image, valid = spec_lib.image_and_mask(array, self.nodata, where=where)
            validity.mask_out_of_range(image, valid, self.specs[key], key=key, where=where)
            sample[key], sample[spec_lib.valid_key(key)] = image, valid
        for key, feature_key in self._label_features.items():
            sample[key] = np.asarray(example[feature_key])
        return sample

    def reads_from(self) -> dict[str, dict[str, str]]:
        return {"tfds": {"name": self.name, "split": self.split, "version": self.version}}

    def __repr__(self) -> str:
        images = {
            key: (feature, self.specs[key].sensor) for key, feature in self._image_features.items()
        }
        return (
            f"TfdsSource(name={self.name!r}, split={self.split!r},"
            f" data_dir={self.data_dir!r}, images={images}, labels={self._label_features},"
            f" nodata={self.nodata})"
        )

    def _where(self, feature_key: str) -> str:
        return f"TFDS {self.name!r} split {self.split!r} feature {feature_key!r}"


def _prepared_builder(name: str, split: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The builder of `name` if prepared in `data_dir` as ArrayRecord; otherwise a clear error."""
    shown_dir = (
        data_dir
        if data_dir is not None
        else (f"{tfds.core.constants.get_default_data_dir()} (the tfds default)")
    )
    dir_flag = f" --data_dir={data_dir}" if data_dir is not None else ""
    how = (
        f"Prepare it with `tfds build {name} --file_format={_ARRAY_RECORD}{dir_flag}`"
        f" or `tfds.builder({name!r}, data_dir=...)"
        f".download_and_prepare(file_format={_ARRAY_RECORD!r})`."
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared in data_dir"
            f" {shown_dir}. {how}"
        )
    formats = {f.value for f in builder.info.available_file_formats()}
    if _ARRAY_RECORD not in formats:
        raise ValueError(
            f"TFDS dataset {name!r} (split {split!r}) in data_dir {shown_dir} is stored as"
            f" {', '.join(sorted(formats)) or 'an unknown format'}, which has no TF-free random"
            f" access. {how}"
        )
    return builder


def _class_names(feature: Any) -> list[str] | None:
    """Class names of a `ClassLabel` feature or of a sequence of them, else None."""
    if isinstance(feature, tfds.features.Sequence):
        feature = feature.feature
    if isinstance(feature, tfds.features.ClassLabel):
        return list(feature.names)
    return None
