"""The Celery app's configuration: how agent tasks are routed, and the task events knob."""
from dispatch.runtime.app import AGENT_QUEUE, create_app
from dispatch.config import Settings


def distributed(**env: str) -> Settings:
    return Settings.from_env({"DISPATCH_BROKER_URL": "redis://127.0.0.1:1/0", **env})


def test_agent_tasks_are_routed_by_queue_alone_so_they_are_sent_without_an_exchange_lookup():
    app = create_app(distributed())
    route = app.amqp.router.route({}, "dispatch.agent")
    assert route["queue"].name == AGENT_QUEUE
    # no exchange and no routing key of its own: Celery then publishes to the queue directly (the
    # anonymous exchange), where a named exchange costs a binding lookup in Redis on every send
    assert app.conf.task_routes["dispatch.agent"] == {"queue": AGENT_QUEUE}


def test_task_events_are_on_by_default_and_can_be_turned_off():
    on = create_app(distributed()).conf
    assert on.worker_send_task_events and on.task_send_sent_event
    off = create_app(distributed(DISPATCH_TASK_EVENTS="0")).conf
    assert not off.worker_send_task_events and not off.task_send_sent_event
    assert not create_app(Settings.from_env({"DISPATCH_TASK_EVENTS": "false"})).conf.worker_send_task_events
