"""The version of the public driver contract.

Plugins declare the contract version they were written against. Within one
major version the contract only grows: a plugin built for an older minor keeps
loading, and capabilities introduced after its minor count as not declared. A
different major is refused.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CONTRACT_VERSION", "ContractVersion"]


class ContractVersion(NamedTuple):
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str | ContractVersion) -> ContractVersion:
        if isinstance(text, ContractVersion):
            return text
        try:
            major, minor = str(text).strip().split(".")
            return cls(int(major), int(minor))
        except ValueError:
            raise ValueError(f"contract version must look like 'MAJOR.MINOR', got {text!r}") from None

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


#: The contract this copy of virtdrivers implements.
CONTRACT_VERSION = ContractVersion(1, 2)
