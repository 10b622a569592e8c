"""kap's PostgreSQL layer: typed models, engine/session helpers; migrations in `db.migrate`."""

from kap.platform.db.models import (
    Base,
    Campaign,
    Dataset,
    DatasetItem,
    Role,
    RunMetric,
    RunStatus,
    Step,
    Task,
    TrainingRun,
    TrainingStage,
    Trajectory,
    TrajectoryStatus,
    Verdict,
)
from kap.platform.db.session import make_engine, make_sessionmaker, session_scope

__all__ = [
    "Base",
    "Campaign",
    "Dataset",
    "DatasetItem",
    "Role",
    "RunMetric",
    "RunStatus",
    "Step",
    "Task",
    "TrainingRun",
    "TrainingStage",
    "Trajectory",
    "TrajectoryStatus",
    "Verdict",
    "make_engine",
    "make_sessionmaker",
    "session_scope",
]
