"""The device fingerprint lives in :mod:`hwnas.device` (the predictor reads it without the builder); this module
keeps the old import path of the builder's own modules working."""

from hwnas.device import (DEVICE_KEYS, OPTIONAL_DEVICE_KEYS, describe, device_differences, device_id,  # noqa: F401
                          explain_differences, fingerprint, fingerprint_id, isa_level, relevant_flags, same_device,
                          same_runtime, short_name)
