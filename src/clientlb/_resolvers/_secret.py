"""A wrapper that keeps a credential out of ``repr``, ``str``, logs and tracebacks."""

from __future__ import annotations

from .._core.redact import redact as _redact_rule

__all__ = ["Secret", "redact"]


class Secret:
    """Holds a token or password; shows ``'***'`` everywhere except :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> str:  # never pickled
        raise TypeError("a Secret cannot be pickled")


def redact(text: str, *secrets: Secret | None) -> str:
    """``text`` with every secret's value replaced by ``***`` (defence in depth),
    then through the one redaction rule (:func:`clientlb._core.redact.redact`)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret.reveal(), "***")
    return _redact_rule(text)
