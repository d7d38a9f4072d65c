"""Where a run lives between processes, with no Celery: key names, the state store, the phase-4
scheduler and its Lua scripts, the run ledger and the cancel flag."""
from dispatch.store.deployment import Deployment, make_store, ride_out_outages
from dispatch.store.keys import Keys
from dispatch.store.ledger import RunLedger
from dispatch.store.scheduler import AlreadyClaimed, Completion, DagScheduler, NoSuchRun, OverBudget, SendKeys
from dispatch.store.state import (StateStore, load_state_file, parse_state, save_state_file)

__all__ = ["AlreadyClaimed", "Completion", "DagScheduler", "Deployment", "Keys", "NoSuchRun", "OverBudget", "RunLedger",
           "SendKeys",
           "StateStore", "load_state_file", "make_store", "parse_state", "ride_out_outages", "save_state_file"]
