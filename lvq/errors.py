"""User-facing exceptions. Their messages are shown as they are, in the CLI and the dashboard."""


class LvqError(ValueError):
    """A problem the user can act on (bad setting, unknown model, too little text, bad run folder)."""


class Cancelled(RuntimeError):
    """Raised by the pipeline when its cancel flag is set; nothing half-written is left behind."""
