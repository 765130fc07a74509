"""The interfaces plugins implement: :class:`Model`, :class:`Dataset` and :class:`Metric`.

A plugin subclasses one of these and registers it under an entry point group
(``harness.models``, ``harness.datasets``, ``harness.metrics``). The evaluator owns time: a
model never sees an event before it has been asked to predict it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np

from harness.interactions import Interactions

__all__ = ["CAPABILITIES", "Dataset", "Metric", "Model", "progress", "resolve_device"]

CAPABILITIES = frozenset({"rank", "state", "return_time"})
_T = TypeVar("_T")
#: Set by the model's process while ``fit`` or ``train_epoch`` runs: ``hook(done, total, unit)``.
_progress_hook: Callable[[int, int | None, str], None] | None = None


def progress(iterable: Iterable[_T], total: int | None = None, unit: str = "batch") -> Iterator[_T]:
    """Yield the items of ``iterable`` while the harness shows how many are done.

    Wrap the loop over batches (or windows, or users) of :meth:`Model.fit` or
    :meth:`Model.train_epoch` in it: the evaluator draws a progress bar of the epoch from these
    counts (the model's process only sends them, at most a few times a second). ``total``
    defaults to ``len(iterable)`` when it has one. Outside a run, and in any other method, it
    yields the items and nothing else.
    """
    hook = _progress_hook
    if hook is None:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    hook(0, total, unit)
    done = 0
    for item in iterable:
        yield item
        done += 1
        hook(done, total, unit)


def resolve_device(device: str) -> Any:
    """The ``torch.device`` for a model's ``device`` parameter: ``auto`` is the first GPU when
    torch sees one, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and any other torch device name
    are taken as they are. Asking for a GPU that torch does not see is a
    :class:`~harness.errors.UsageError` that says so."""
    import torch

    from harness.errors import UsageError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"device {device!r} is not a torch device ({exc}); use auto, cpu or "
                         "cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: torch sees no GPU here (torch {torch.__version__}, "
                         f"built {'with' if torch.version.cuda else 'without'} CUDA); use "
                         "--device auto or cpu, or install a CUDA build of torch")
    return resolved


class Model(ABC):
    """A model of a temporal interaction stream.

    Life cycle, as the evaluator drives it:

    1. ``Model(**params)``: constructor arguments are explicit keywords, stored as given, with no
       other logic (like scikit-learn estimators), so that parameters can be listed, tuned and
       recorded.
    2. ``fit(train, seed=...)``: sees the training events only and sets up learned state.
       Models with ``iterative = True`` then get ``train_epoch()`` once per epoch; after each
       epoch the evaluator validates a fork of the model's process, so nothing a validation
       pass does reaches training.
    3. For every evaluation block, in time order: ``score(block)`` (capability ``rank``), then
       ``observe(block)``, then ``predict_state(block)`` (capability ``state``) and, at the end
       of a session, ``predict_return_time(...)`` (capability ``return_time``).

    A block is a run of consecutive events. When ``supports_blocks`` is true the evaluator passes
    runs in which no user and no item occurs twice; otherwise every block holds one event. A
    model that declares ``independent_users`` gets its evaluation events user by user instead:
    block ``k`` holds the ``k``-th event of a pass of every user who has one (users distinct,
    items may repeat), each user's events in time order, other users' events in any order.

    The model runs in a process of its own that holds the training events and the blocks it has
    been asked about, nothing else; every array it gets is a read-only copy. Every run audits its
    answers (see :mod:`harness.sandbox` and ``harness.evaluate``).
    """

    #: What the model predicts: a subset of ``{"rank", "state", "return_time"}``.
    capabilities: ClassVar[frozenset[str]] = frozenset({"rank"})
    #: True when ``score`` handles blocks of several events (see :meth:`score`).
    supports_blocks: ClassVar[bool] = False
    #: True when the model trains in epochs through :meth:`train_epoch`.
    iterative: ClassVar[bool] = False
    #: Epochs to train when the run does not say (iterative models only).
    default_epochs: ClassVar[int] = 1
    #: True when the answers about a user's event depend only on that user's earlier events and
    #: what ``fit`` learned, never on other users' evaluation events (per-user recurrent models).
    #: The evaluator then batches events of many users in one block (see above), and audits the
    #: claim: a copy that observes only the user's own events must give the same answer.
    independent_users: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.capabilities) - CAPABILITIES
        if unknown:
            raise TypeError(
                f"{cls.__name__}.capabilities may only contain {sorted(CAPABILITIES)}, "
                f"but got {sorted(unknown)}"
            )

    # -- parameters ---------------------------------------------------------------------------

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the constructor's keyword parameters."""
        signature = inspect.signature(cls.__init__)
        return [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, read back from attributes of the same name."""
        return {name: getattr(self, name) for name in self.param_names()}

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Suggest constructor parameters from an ``optuna.Trial``; empty means nothing to tune."""
        return {}

    # -- training -----------------------------------------------------------------------------

    @abstractmethod
    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Set up learned state from the training events (all of it, unless ``iterative``)."""

    def use_stream_summary(self, summary: dict[str, Any]) -> None:
        """Receive aggregate statistics of the whole stream, evaluation part included, before
        :meth:`fit`. Called only under a protocol with ``stream_summary=True`` (the JODIE paper's
        preset, ``harness run --preset jodie``, where the authors' code standardises time
        differences and sizes its time windows with the whole stream), and recorded in the run
        record; never events. The keys are those of :func:`harness.evaluate.stream_summary`.
        The default ignores them."""

    def train_epoch(self) -> dict[str, float]:
        """Train one more epoch on the events given to :meth:`fit`; return losses to record."""
        raise NotImplementedError(
            f"{type(self).__name__} sets iterative = True, so it must implement train_epoch()"
        )

    # -- streaming ----------------------------------------------------------------------------

    def score(self, block: Interactions) -> np.ndarray:
        """Scores of all items for every event of the block, shape ``(len(block), n_items)``.

        Higher means more likely. Row ``j`` is the prediction for event ``j`` made just before it
        happens: it may depend on the model's state, on ``block.user[j]`` and ``block.t[j]``, and on
        the events ``0..j-1`` of the block (which happened before it, but have not been passed to
        :meth:`observe` yet); never on the item, label or features of event ``j`` or later ones.
        Scores must be finite, and scoring must not change the model's state: the evaluator
        checks both on a sample of blocks in every run.
        """
        raise NotImplementedError(
            f"{type(self).__name__} declares capability 'rank', so it must implement score()"
        )

    def observe(self, block: Interactions) -> None:
        """Update the state with events that have now happened (parameters stay frozen unless the
        model was asked for online updates)."""

    def predict_state(self, block: Interactions) -> np.ndarray:
        """Probability that each event of the block carries state label 1, from the state after
        the event (called right after :meth:`observe` of the same block)."""
        raise NotImplementedError(
            f"{type(self).__name__} declares capability 'state', so it must implement "
            "predict_state()"
        )

    def predict_return_time(self, user: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Expected seconds from ``t`` (the end of each user's session) to that user's next
        session, given everything observed so far."""
        raise NotImplementedError(
            f"{type(self).__name__} declares capability 'return_time', so it must implement "
            "predict_return_time()"
        )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


class Dataset(ABC):
    """A source of one interaction stream.

    ``name`` is set by whoever resolves the dataset (the registry name or the file path).
    ``session_gap`` is the inactivity gap, in seconds, that ends a session in the session protocol.
    """

    #: Short description shown by ``harness list datasets``.
    description: ClassVar[str] = ""
    #: Inactivity gap in seconds that ends a session (1 h as for LastFM unless a dataset says).
    session_gap: float = 3600.0
    name: str = ""

    @abstractmethod
    def load(self) -> Interactions:
        """Return the whole stream, ordered by time."""

    def sha256(self) -> str:
        """Checksum of the source data (a generator returns a digest of its parameters)."""
        return ""


class Metric(ABC):
    """A metric as a class: ``update`` with batches, then ``compute``.

    ``needs`` names what the evaluator feeds it: ``"rank"`` (``update(ranks)``, 1-based ranks of
    the true items), ``"state"`` (``update(labels, scores)``) or ``"return_time"``
    (``update(true_gaps, predicted_gaps)``). ``k`` is an optional cut-off (``recall@10``).
    """

    needs: ClassVar[str]
    higher_is_better: ClassVar[bool] = True

    def __init__(self, k: int | None = None) -> None:
        self.k = k
        self.reset()

    @property
    def name(self) -> str:
        base = type(self).__name__.lower()
        return base if self.k is None else f"{base}@{self.k}"

    @abstractmethod
    def reset(self) -> None:
        """Forget every update."""

    @abstractmethod
    def update(self, *arrays: np.ndarray) -> None:
        """Add a batch of observations."""

    @abstractmethod
    def compute(self) -> float:
        """The metric over everything added since the last reset."""
