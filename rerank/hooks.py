"""Hooks: user callables consulted before each retrieval (ADR-029, "Hooks Integration").

Two events, each a list of callables run in registration order:

``"intelligence"`` — ``hook(ctx: HookContext) -> str | None``: recommends a registry mechanism for
    ``ctx.task``; consulted only when the query names a task. Every hook sees the recommendation so
    far in ``ctx.recommended``; returning ``None`` keeps it, returning a name replaces it. Each
    registry starts with :func:`task_intelligence` (the table :data:`TASK_MECHANISMS`), so hooks
    registered later refine it. The final recommendation becomes the query's mechanism.
``"pre-retrieval"`` — ``hook(ctx: HookContext) -> dict | AttentionSettings | None``: runs after the
    intelligence hooks and may change this query's settings: ``mechanism`` (a registry name),
    ``overfetch`` (candidates fetched per result) or ``text_settings`` (a
    :class:`~rerank.text_settings.TextRerankSettings`). A dict holds only the fields it changes;
    ``None`` changes nothing. Later hooks see earlier changes in ``ctx.settings``.

A hook that raises, returns something else, or names an unknown mechanism is skipped: the error
is logged (warning) and recorded in :attr:`HookOutcome.errors`, which the pipeline puts in
``results.hook_errors``; the query goes on. Hooks are synchronous (a coroutine is rejected).

Which registry runs: a :class:`rerank.pipeline.Pipeline` uses the one passed as ``hooks=``, else
:data:`default_registry` (the global one that :func:`register` fills); ``AttentionEnhancedMemory``
does the same through its pipeline (``memory.hooks``).
"""
from __future__ import annotations

import inspect
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from .mechanisms import registry as mechanisms
from .text_settings import TextRerankSettings

log = logging.getLogger(__name__)

PRE_RETRIEVAL = "pre-retrieval"
INTELLIGENCE = "intelligence"
#: The events hooks can be registered for, in the order they run for a query.
EVENTS = (INTELLIGENCE, PRE_RETRIEVAL)

#: The built-in intelligence table: task type → registry mechanism (``default`` for any other task).
TASK_MECHANISMS = {
    "code-analysis": "hierarchical-cross-attention",
    "memory-retrieval": "memory-attention",
    "long-context": "longformer-attention",
    "swarm-coordination": "star-attention",
    "default": "flash-attention-v2",
}


class HookError(ValueError):
    """A hook's answer that breaks the contract (wrong type, unknown field or mechanism)."""


@dataclass(frozen=True)
class AttentionSettings:
    """One query's attention settings. ``None`` means "the pipeline's own choice": the scorer it
    picks by what the candidates carry, its ``overfetch``, its text settings."""
    mechanism: str | None = None
    overfetch: int | None = None
    text_settings: TextRerankSettings | None = None

    def changed(self, changes) -> "AttentionSettings":
        """These settings with ``changes`` (a dict of field → value, or AttentionSettings whose
        non-None fields win) applied and checked; raises :class:`HookError` on a bad change."""
        if isinstance(changes, AttentionSettings):
            changes = {f.name: getattr(changes, f.name) for f in fields(changes)
                       if getattr(changes, f.name) is not None}
        if not isinstance(changes, dict):
            raise HookError("a pre-retrieval hook returns a dict of changes, AttentionSettings or "
                            f"None; got {type(changes).__name__}")
        known = {f.name for f in fields(self)}
        unknown = sorted(set(map(str, changes)) - known)
        if unknown:
            raise HookError(f"unknown setting(s) {', '.join(map(repr, unknown))}; settings are "
                            f"{', '.join(sorted(known))}")
        for name, value in changes.items():
            if name == "mechanism" and value is not None:
                check_mechanism(value, "mechanism")
            elif name == "overfetch" and value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise HookError(f"overfetch must be a positive int; got {value!r}")
            elif name == "text_settings" and value is not None:
                if not isinstance(value, TextRerankSettings):
                    raise HookError("text_settings must be a TextRerankSettings; got "
                                    f"{type(value).__name__}")
        return replace(self, **changes)


@dataclass
class HookContext:
    """What hooks see for one query: the query as the caller gave it (text or vector), ``k``,
    the ``task`` type (or None), the ``filter``, the ``source`` ("pipeline" or "memory"), the
    current ``settings``, the intelligence's ``recommended`` mechanism so far, and ``extra``, a
    dict hooks may use to pass notes to later hooks."""
    query: Any
    k: int
    task: str | None = None
    filter: Any = None
    source: str = "pipeline"
    settings: AttentionSettings = field(default_factory=AttentionSettings)
    recommended: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task is not None and not isinstance(self.task, str):
            raise TypeError(f"task must be a string or None; got {type(self.task).__name__}")
        if not isinstance(self.settings, AttentionSettings):
            raise TypeError("settings must be AttentionSettings; got "
                            f"{type(self.settings).__name__}")


@dataclass
class HookOutcome:
    """What the hooks decided for one query: the final ``settings``, the intelligence's
    ``recommended`` mechanism (None without a task) and the ``errors`` of hooks that were
    skipped, one line each."""
    settings: AttentionSettings
    recommended: str | None = None
    errors: list[str] = field(default_factory=list)
    task: str | None = None


def check_mechanism(name, what: str = "mechanism") -> str:
    """``name`` if it is a registered mechanism; :class:`HookError` naming it (with close
    matches) otherwise."""
    if not isinstance(name, str):
        raise HookError(f"{what} must be a registry name (str); got {type(name).__name__}")
    try:
        mechanisms.spec(name)
    except ValueError as exc:
        raise HookError(f"{what}: {exc}") from None
    return name


def task_intelligence(ctx: HookContext) -> str:
    """The built-in intelligence hook: :data:`TASK_MECHANISMS` for ``ctx.task`` (an unknown task
    gets ``TASK_MECHANISMS["default"]``)."""
    return TASK_MECHANISMS.get(ctx.task, TASK_MECHANISMS["default"])


def _name(hook) -> str:
    return getattr(hook, "__qualname__", None) or getattr(hook, "__name__", None) or repr(hook)


class HookRegistry:
    """Hooks for the two :data:`EVENTS`, each called in registration order; thread-safe (a
    query runs the hooks registered when it started). ``builtin=True`` registers
    :func:`task_intelligence` first."""

    def __init__(self, *, builtin: bool = True):
        self._hooks: dict[str, tuple[Callable, ...]] = {event: () for event in EVENTS}
        self._lock = threading.Lock()
        if builtin:
            self.register(INTELLIGENCE, task_intelligence)

    @staticmethod
    def _event(event) -> str:
        if event not in EVENTS:
            raise ValueError(f"unknown hook event {event!r}; events are {', '.join(EVENTS)}")
        return event

    def register(self, event: str, hook: Callable | None = None):
        """Add ``hook`` to ``event`` (after those already there) and return it; without ``hook``,
        a decorator that does so. Registering the same callable twice is an error."""
        self._event(event)
        if hook is None:
            return lambda fn: self.register(event, fn)
        if not callable(hook):
            raise TypeError(f"a hook must be callable; got {type(hook).__name__}")
        with self._lock:
            if hook in self._hooks[event]:
                raise ValueError(f"{_name(hook)} is already registered for {event!r}")
            self._hooks[event] = (*self._hooks[event], hook)
        return hook

    def unregister(self, event: str, hook: Callable) -> None:
        """Remove ``hook`` from ``event``; ValueError if it is not registered there."""
        self._event(event)
        with self._lock:
            if hook not in self._hooks[event]:
                raise ValueError(f"{_name(hook)} is not registered for {event!r}")
            self._hooks[event] = tuple(h for h in self._hooks[event] if h != hook)

    @contextmanager
    def temporary(self, event: str, hook: Callable):
        """``with registry.temporary(event, hook): ...`` — ``hook`` registered inside the block
        only (removed even if the block raises)."""
        self.register(event, hook)
        try:
            yield hook
        finally:
            self.unregister(event, hook)

    def hooks(self, event: str) -> tuple[Callable, ...]:
        """The hooks of ``event`` in call order."""
        return self._hooks[self._event(event)]

    def clear(self, event: str | None = None) -> None:
        """Remove every hook of ``event`` (of both events when None), the built-in included."""
        with self._lock:
            for name in (EVENTS if event is None else (self._event(event),)):
                self._hooks[name] = ()

    def _call(self, event: str, hook, ctx: HookContext, errors: list[str]):
        """One hook's answer, or ``_SKIP`` after recording why it was skipped."""
        try:
            answer = hook(ctx)
            if inspect.isawaitable(answer):
                if hasattr(answer, "close"):
                    answer.close()
                raise HookError("hooks are synchronous; it returned an awaitable")
            if event == INTELLIGENCE:
                if answer is not None:
                    check_mechanism(answer, "recommended mechanism")
                return answer
            return None if answer is None else ctx.settings.changed(answer)
        except Exception as exc:  # noqa: BLE001 - a failing hook is reported, never fatal
            message = f"{event} hook {_name(hook)} failed: {type(exc).__name__}: {exc}"
            log.warning("%s (skipped)", message)
            errors.append(message)
            return _SKIP

    def recommend(self, task: str, ctx: HookContext | None = None) -> tuple[str | None, list[str]]:
        """The intelligence hooks' recommendation for ``task`` and the errors of skipped hooks."""
        if not isinstance(task, str):
            raise TypeError(f"task must be a string; got {type(task).__name__}")
        ctx = HookContext(query=None, k=1, task=task) if ctx is None else ctx
        errors: list[str] = []
        for hook in self.hooks(INTELLIGENCE):
            answer = self._call(INTELLIGENCE, hook, ctx, errors)
            if answer is not _SKIP and answer is not None:
                ctx.recommended = answer
        return ctx.recommended, errors

    def prepare(self, ctx: HookContext) -> HookOutcome:
        """Run the hooks for one query: the intelligence hooks when ``ctx.task`` is set (their
        recommendation becomes ``ctx.settings.mechanism``), then the pre-retrieval hooks."""
        errors: list[str] = []
        if ctx.task is not None:
            recommended, errors = self.recommend(ctx.task, ctx)
            if recommended is not None:
                ctx.settings = replace(ctx.settings, mechanism=recommended)
        for hook in self.hooks(PRE_RETRIEVAL):
            settings = self._call(PRE_RETRIEVAL, hook, ctx, errors)
            if settings is not _SKIP and settings is not None:
                ctx.settings = settings
        return HookOutcome(ctx.settings, ctx.recommended, errors, ctx.task)


_SKIP = object()

#: The global registry: used by every Pipeline (and so every AttentionEnhancedMemory) built
#: without its own ``hooks=``.
default_registry = HookRegistry()


def register(event: str, hook: Callable | None = None):
    """:meth:`HookRegistry.register` on :data:`default_registry`."""
    return default_registry.register(event, hook)


def unregister(event: str, hook: Callable) -> None:
    """:meth:`HookRegistry.unregister` on :data:`default_registry`."""
    default_registry.unregister(event, hook)


def temporary(event: str, hook: Callable):
    """:meth:`HookRegistry.temporary` on :data:`default_registry`."""
    return default_registry.temporary(event, hook)


__all__ = ["AttentionSettings", "EVENTS", "HookContext", "HookError", "HookOutcome",
           "HookRegistry", "INTELLIGENCE", "PRE_RETRIEVAL", "TASK_MECHANISMS", "check_mechanism",
           "default_registry", "register", "task_intelligence", "temporary", "unregister"]
