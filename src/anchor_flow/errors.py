"""Project exceptions.

Every error raised at a public boundary is an :class:`AnchorFlowError` (a ``ValueError``)
whose message restates the offending input and says what was expected.
"""

from __future__ import annotations

__all__ = [
    "AnchorFlowError",
    "ContextLengthError",
    "DeadAttentionHooksError",
    "LabelWordError",
    "ModelLoadError",
    "PromptError",
    "ResultsError",
    "UnsupportedModelError",
]


class AnchorFlowError(ValueError):
    """Base class of every error anchor_flow raises on bad input."""


class ModelLoadError(AnchorFlowError):
    """A model name, folder or object could not be loaded (e.g. no weights offline)."""


class UnsupportedModelError(AnchorFlowError):
    """The object is not a TransformerLens model anchor_flow knows how to drive."""


class DeadAttentionHooksError(AnchorFlowError):
    """The model's attention hooks exist but edits are discarded or gradients never arrive."""


class PromptError(AnchorFlowError):
    """A prompt, template or demonstration set is malformed."""


class LabelWordError(PromptError):
    """A label word does not map to a usable, class-unique token."""


class ContextLengthError(PromptError):
    """A prompt is longer than the model's context window."""


class ResultsError(AnchorFlowError):
    """A results file or folder is missing, incomplete or of an unknown schema."""
