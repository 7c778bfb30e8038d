"""Training hooks; importing this package registers them in ``masklab.config.registries.HOOKS``.

Priorities (lower runs first for every event): TimerHook 10, NonFiniteLossHook 20, EMAHook 30,
EvalHook 40, CheckpointHook 50, LoggerHook 90. Each class's docstring says why it sits there.
"""

from masklab.engine.hooks.base import Hook
from masklab.engine.hooks.checkpoint import CheckpointHook
from masklab.engine.hooks.ema import EMAHook
from masklab.engine.hooks.eval import EvalHook
from masklab.engine.hooks.logger import LoggerHook
from masklab.engine.hooks.nonfinite import NonFiniteLossHook
from masklab.engine.hooks.timer import TimerHook

__all__ = ["CheckpointHook", "EMAHook", "EvalHook", "Hook", "LoggerHook", "NonFiniteLossHook", "TimerHook"]
