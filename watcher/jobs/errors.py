"""What can go wrong with a job request; the HTTP layer maps each to its status."""

from __future__ import annotations


class JobError(Exception):
    """Base of the jobs errors."""


class InvalidJob(JobError):
    """A field of a job is invalid (422); every problem names its field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        """Keep the problems as ``(field, message)`` pairs."""
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))

    @classmethod
    def one(cls, field: str, message: str) -> InvalidJob:
        """A single problem."""
        return cls([(field, message)])


class JobNotFound(JobError):
    """No job has that id (404)."""


class JobConflict(JobError):
    """The request conflicts with the state of the schedule (409), e.g. a duplicate id."""


class SchedulerUnavailable(JobError):
    """The scheduler is not running: the service is starting or stopping (503)."""
