"""Checks of a strategy's case options, shared by the strategies (run at collection)."""

from __future__ import annotations

from typing import Mapping


def check_known(cls: type, options: Mapping[str, object]) -> None:
    """Every option is one of ``cls.option_names``."""
    unknown = set(options) - set(cls.option_names)
    if unknown:
        raise ValueError(f"{cls.name}: unknown option(s) {sorted(unknown)}; known: {', '.join(cls.option_names)}")


def check_integer(cls: type, options: Mapping[str, object], key: str, least: int, what: str) -> None:
    """Option ``key``, when given, is an integer ≥ ``least``."""
    value = options.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ValueError(f"{cls.name}: {key} is {what} (an integer ≥ {least}), got {value!r}")


class Chunked:
    """Option ``chunks``: the micro-batches a pipeline schedule splits this rank's batch into per step.

    Shared by the pipeline strategies (DeepSpeed's, torch's schedules, fairscale's Pipe); a subclass
    lists ``chunks`` in its ``option_names``.
    """

    default_chunks = 4

    @classmethod
    def validate_options(cls, options: Mapping[str, object]) -> None:
        check_known(cls, options)
        check_integer(cls, options, "chunks", 1, "the number of micro-batches per step")

    @property
    def chunks(self) -> int:
        return int(self.options.get("chunks", self.default_chunks))

    def whole_batch(self, micro_batch: int, grad_accum: int) -> int:
        """This rank's examples per step, which must split into ``chunks`` equal micro-batches."""
        whole = micro_batch * grad_accum
        if whole % self.chunks:
            raise ValueError(f"{self.name}: a batch of {whole} does not split into {self.chunks} chunks; "
                             f"choose a global batch divisible by {self.chunks}")
        return whole
