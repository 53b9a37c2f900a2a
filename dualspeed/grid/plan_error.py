"""The error every plan-time check raises: its first line names the key, the value and what is allowed."""


class PlanError(ValueError):
    pass
