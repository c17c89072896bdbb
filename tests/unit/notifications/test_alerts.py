"""``ConsecutiveFailuresAlert`` on real DAG runs (``dag.test()``), with Airflow's own notifiers.

Each DAG's task fails or succeeds as its DAG run's conf says (``{"<task_id>": "ok"}``; failing by
default); the counters live in Airflow Variables of the test metadata DB, one DAG id per test.
The e-mail tests use the SMTP provider's real ``SmtpNotifier`` against a real SMTP server.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta
from typing import Any, ClassVar

import pendulum
import pytest
from airflow.sdk import BaseNotifier

from airflow_provider_hlml.notifications.alerts import (
    VARIABLE_PREFIX,
    ConsecutiveFailuresAlert,
    default_training_alert,
)
from tests.fixtures.smtp import SmtpServer

START = pendulum.datetime(2024, 1, 1, tz="UTC")
SMTP_CONN_ID = "hlml_alert_smtp"


class Recorder(BaseNotifier):
    """Records every notification with its rendered ``message`` (a templated field)."""

    template_fields = ("message",)
    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(
        self,
        name: str = "recorder",
        message: str = "{{ ti.task_id }} {{ hlml_alert.consecutive_failures }}/{{ hlml_alert.threshold }}",
    ) -> None:
        super().__init__()
        self.name = name
        self.message = message

    def notify(self, context: Any) -> None:
        Recorder.calls.append(
            {"name": self.name, "message": self.message, "alert": dict(context["hlml_alert"])}
        )


class Broken(BaseNotifier):
    def notify(self, context: Any) -> None:
        raise ConnectionError("chat service down")


def work(**context: Any) -> str:
    """Fail unless the DAG run's conf says ``"ok"`` for this task."""
    ti = context["ti"]
    if (context["dag_run"].conf or {}).get(ti.task_id, "fail") != "ok":
        raise RuntimeError(f"training of {ti.task_id} diverged (try {ti.try_number})")
    return "ok"


@pytest.fixture(autouse=True)
def _clean(airflow_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    Recorder.calls.clear()
    for option in ("TRAINING_FAILURE_ALERT_THRESHOLD", "ALERT_EMAIL_TO", "ALERT_SMTP_CONN_ID"):
        monkeypatch.delenv(f"AIRFLOW__HLML__{option}", raising=False)
    monkeypatch.delenv("AIRFLOW__EMAIL__FROM_EMAIL", raising=False)


@pytest.fixture
def smtp_conn(smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> str:
    conn = {
        "conn_type": "smtp",
        "host": smtp.host,
        "port": smtp.port,
        "extra": {
            "disable_ssl": True,
            "disable_tls": True,
            "from_email": "airflow@example.com",
            "retry_limit": 0,
            "timeout": 10,
        },
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{SMTP_CONN_ID.upper()}", json.dumps(conn))
    return SMTP_CONN_ID


def _uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _dag(dag_id: str, tasks: dict[str, dict[str, Any]]) -> Any:
    """A DAG of independent PythonOperators running :func:`work`, serialized to the metadata DB."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        for task_id, kwargs in tasks.items():
            PythonOperator(task_id=task_id, python_callable=work, **kwargs)
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag


def _run(dag: Any, **outcomes: str) -> dict[str, tuple[str, int]]:
    """One ``dag.test()`` run; each task's final state and try number."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    dag_run = dag.test(run_conf=outcomes)
    with create_session() as session:
        rows = session.query(TaskInstance.task_id, TaskInstance.state, TaskInstance.try_number).filter(
            TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {task_id: (str(state), try_number) for task_id, state, try_number in rows}


def _counter(dag_id: str, task_id: str) -> dict[str, Any] | None:
    """The stored counter of a task, read from the metadata DB."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(Variable).filter(Variable.key == f"{VARIABLE_PREFIX}{dag_id}.{task_id}").first()
        return None if row is None else json.loads(row.val)


def _messages() -> list[str]:
    return [call["message"] for call in Recorder.calls]


class TestConsecutiveFailures:
    def test_fires_once_per_episode_at_the_third_failure(self) -> None:
        alert = ConsecutiveFailuresAlert([Recorder()], threshold=3)
        dag_id = _uid("alert_episode")
        dag = _dag(dag_id, {"train": {"on_failure_callback": alert, "on_success_callback": alert}})

        for expected_count in (1, 2):
            assert _run(dag) == {"train": ("failed", 1)}
            assert _counter(dag_id, "train") == {"consecutive_failures": expected_count, "alerted": False}
        assert Recorder.calls == []

        _run(dag)
        assert _messages() == ["train 3/3"]
        assert Recorder.calls[0]["alert"] == {
            "consecutive_failures": 3,
            "threshold": 3,
            "dag_id": dag_id,
            "task_id": "train",
            "map_index": -1,
            "key": None,
        }
        _run(dag)  # the 4th failure of the same episode
        assert _messages() == ["train 3/3"]
        assert _counter(dag_id, "train") == {"consecutive_failures": 4, "alerted": True}

        assert _run(dag, train="ok") == {"train": ("success", 1)}
        assert _counter(dag_id, "train") is None  # the success ended the episode

        for _ in range(2):
            _run(dag)
        assert _messages() == ["train 3/3"]
        _run(dag)
        assert _messages() == ["train 3/3", "train 3/3"]

    def test_retries_count_once_and_a_retry_callback_is_ignored(self) -> None:
        alert = ConsecutiveFailuresAlert([Recorder()], threshold=2)
        dag_id = _uid("alert_retries")
        callbacks = {"on_failure_callback": alert, "on_success_callback": alert, "on_retry_callback": alert}
        dag = _dag(dag_id, {"train": {"retries": 1, "retry_delay": timedelta(0), **callbacks}})

        assert _run(dag) == {"train": ("failed", 2)}  # both tries failed
        assert _counter(dag_id, "train") == {"consecutive_failures": 1, "alerted": False}
        assert Recorder.calls == []
        assert _run(dag) == {"train": ("failed", 2)}
        assert _messages() == ["train 2/2"]

    def test_tasks_are_counted_separately_by_one_shared_alert(self) -> None:
        alert = ConsecutiveFailuresAlert([Recorder()], threshold=2)
        dag_id = _uid("alert_two_tasks")
        both = {"on_failure_callback": alert, "on_success_callback": alert}
        dag = _dag(dag_id, {"a": both, "b": both})

        _run(dag)
        assert Recorder.calls == []
        _run(dag, b="ok")  # a: 2nd failure in a row; b: its success resets it
        assert _messages() == ["a 2/2"]
        _run(dag)
        assert _counter(dag_id, "a") == {"consecutive_failures": 3, "alerted": True}
        assert _counter(dag_id, "b") == {"consecutive_failures": 1, "alerted": False}
        _run(dag)
        # The shared notifier renders its template for b afresh, not a's rendered text.
        assert _messages() == ["a 2/2", "b 2/2"]
        assert [c["alert"]["task_id"] for c in Recorder.calls] == ["a", "b"]

    def test_tasks_given_one_key_share_a_counter(self) -> None:
        from airflow.models.variable import Variable

        alert = ConsecutiveFailuresAlert([Recorder()], threshold=2, key=_uid("shared"))
        dag = _dag(
            _uid("alert_key"), {"a": {"on_failure_callback": alert}, "b": {"on_failure_callback": alert}}
        )
        _run(dag)
        assert len(Recorder.calls) == 1
        assert Recorder.calls[0]["alert"]["consecutive_failures"] == 2
        assert json.loads(Variable.get(f"{VARIABLE_PREFIX}{alert.key}"))["consecutive_failures"] == 2

    def test_a_raising_notifier_does_not_stop_the_others(self, caplog: pytest.LogCaptureFixture) -> None:
        alert = ConsecutiveFailuresAlert([Broken(), Recorder("second")], threshold=1)
        dag = _dag(_uid("alert_broken"), {"train": {"on_failure_callback": alert}})
        assert _run(dag) == {"train": ("failed", 1)}
        assert [c["name"] for c in Recorder.calls] == ["second"]
        assert "chat service down" in caplog.text

    def test_plain_callables_get_the_enriched_context(self) -> None:
        seen: list[dict[str, Any]] = []
        alert = ConsecutiveFailuresAlert(
            [lambda context: seen.append(dict(context["hlml_alert"]))], threshold=1
        )
        dag_id = _uid("alert_callable")
        _run(_dag(dag_id, {"train": {"on_failure_callback": alert}}))
        assert [s["consecutive_failures"] for s in seen] == [1]
        assert seen[0]["dag_id"] == dag_id

    def test_threshold_comes_from_the_hlml_section(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__TRAINING_FAILURE_ALERT_THRESHOLD", "2")
        alert = ConsecutiveFailuresAlert([Recorder()])
        assert alert.threshold is None
        assert alert.effective_threshold() == 2
        dag = _dag(_uid("alert_conf"), {"train": {"on_failure_callback": alert}})
        _run(dag)
        assert Recorder.calls == []
        _run(dag)
        assert _messages() == ["train 2/2"]

    def test_invalid_arguments_are_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ValueError, match="threshold must be >= 1"):
            ConsecutiveFailuresAlert([Recorder()], threshold=0)
        with pytest.raises(TypeError, match="not callable"):
            ConsecutiveFailuresAlert(["mail me"])  # type: ignore[list-item]
        monkeypatch.setenv("AIRFLOW__HLML__TRAINING_FAILURE_ALERT_THRESHOLD", "0")
        with pytest.raises(ValueError, match=r"\[hlml\] training_failure_alert_threshold"):
            ConsecutiveFailuresAlert([Recorder()]).effective_threshold()


class TestSmtpNotifier:
    def test_the_real_smtp_notifier_mails_once_per_episode(self, smtp: SmtpServer, smtp_conn: str) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifier = SmtpNotifier(
            to="ml-team@example.com",
            subject="{{ ti.task_id }} failed {{ hlml_alert.consecutive_failures }} times",
            html_content="threshold {{ hlml_alert.threshold }}",
            smtp_conn_id=smtp_conn,
        )
        alert = ConsecutiveFailuresAlert([notifier], threshold=3)
        dag = _dag(
            _uid("alert_smtp"), {"train": {"on_failure_callback": alert, "on_success_callback": alert}}
        )
        for _ in range(4):
            _run(dag)
        (message,) = smtp.wait_for(1)
        assert message["Subject"] == "train failed 3 times"
        assert message["To"] == "ml-team@example.com"
        assert message["From"] == "airflow@example.com"
        assert "threshold 3" in message.get_body(("html",)).get_content()
        assert len(smtp.messages()) == 1  # not again at the 4th failure

    def test_default_training_alert_from_the_hlml_section(
        self, smtp: SmtpServer, smtp_conn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AIRFLOW__HLML__ALERT_EMAIL_TO", " ml-team@example.com, oncall@example.com ,")
        monkeypatch.setenv("AIRFLOW__HLML__ALERT_SMTP_CONN_ID", smtp_conn)
        monkeypatch.setenv("AIRFLOW__HLML__TRAINING_FAILURE_ALERT_THRESHOLD", "2")
        alert = default_training_alert()
        assert alert is not None
        dag_id = _uid("alert_default")
        dag = _dag(dag_id, {"train": {"on_failure_callback": alert, "on_success_callback": alert}})
        _run(dag)
        _run(dag)
        (message,) = smtp.wait_for(1)
        assert message["Subject"] == f"[hlml] train of {dag_id} failed 2 times in a row"
        assert sorted(smtp.received[0].rcpt_tos) == ["ml-team@example.com", "oncall@example.com"]
        body = message.get_body(("html",)).get_content()
        assert "training of train diverged" in body
        assert "alert threshold 2" in body

    def test_default_training_alert_is_none_without_addresses(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert default_training_alert() is None
        monkeypatch.setenv("AIRFLOW__HLML__ALERT_EMAIL_TO", " , ")
        assert default_training_alert() is None


class TestMLflowTrainOperatorWiring:
    def _op(self, **kwargs: Any) -> Any:
        from airflow_provider_hlml.operators.train import MLflowTrainOperator

        return MLflowTrainOperator(task_id="train", python_callable=dict, experiment_name="x", **kwargs)

    def test_no_default_alert_without_addresses(self) -> None:
        op = self._op()
        assert op.on_failure_callback == []
        assert op.on_success_callback == []

    def test_an_alert_joins_the_users_callbacks(self) -> None:
        def mine(context: Any) -> None: ...

        def also_mine(context: Any) -> None: ...

        alert = ConsecutiveFailuresAlert([Recorder()])
        op = self._op(failure_alert=alert, on_failure_callback=mine, on_success_callback=[mine, also_mine])
        assert op.on_failure_callback == [mine, alert]
        assert op.on_success_callback == [mine, also_mine, alert]
        assert op.has_on_failure_callback

    def test_default_and_none(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        monkeypatch.setenv("AIRFLOW__HLML__ALERT_EMAIL_TO", "ml-team@example.com")
        monkeypatch.setenv("AIRFLOW__EMAIL__FROM_EMAIL", "hlml@example.com")
        (alert,) = self._op().on_failure_callback
        assert isinstance(alert, ConsecutiveFailuresAlert)
        assert alert.threshold is None  # read from [hlml] when counting
        (notifier,) = alert.notifiers
        assert isinstance(notifier, SmtpNotifier)
        assert (notifier.to, notifier.smtp_conn_id) == (["ml-team@example.com"], "smtp_default")
        assert notifier.from_email == "hlml@example.com"
        assert self._op().on_success_callback[0] is not alert  # one alert per task
        assert self._op(failure_alert=None).on_failure_callback == []
        with pytest.raises(ValueError, match="failure_alert"):
            self._op(failure_alert="email")

    def test_the_decorator_passes_the_alert_on(self) -> None:
        from airflow.sdk import DAG, task

        alert = ConsecutiveFailuresAlert([Recorder()])
        with DAG(_uid("alert_decorated"), schedule=None, start_date=START) as dag:

            @task.mlflow_train(experiment_name="x", failure_alert=alert)
            def train() -> dict[str, float]:
                return {}

            train()
        op = dag.get_task("train")
        assert op.on_failure_callback == [alert]
        assert op.on_success_callback == [alert]


class TestTrainingAlertEndToEnd:
    def test_failing_training_mails_the_default_alert(
        self, mlflow_conn: str, smtp: SmtpServer, smtp_conn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
        from airflow.sdk import DAG

        from airflow_provider_hlml.operators.train import MLflowTrainOperator

        monkeypatch.setenv("AIRFLOW__HLML__ALERT_EMAIL_TO", "ml-team@example.com")
        monkeypatch.setenv("AIRFLOW__HLML__ALERT_SMTP_CONN_ID", smtp_conn)
        monkeypatch.setenv("AIRFLOW__HLML__TRAINING_FAILURE_ALERT_THRESHOLD", "1")

        def diverge() -> dict[str, float]:
            raise FloatingPointError("loss is nan")

        dag_id = _uid("alert_train")
        with DAG(dag_id, schedule=None, start_date=START) as dag:
            MLflowTrainOperator(task_id="train", python_callable=diverge, experiment_name=dag_id)
        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(dag_folder=os.devnull, collect_dags=False)
        bag.bag_dag(dag)
        sync_bag_to_db(bag, "dags-folder", None)

        assert _run(dag) == {"train": ("failed", 1)}
        (message,) = smtp.wait_for(1)
        assert message["Subject"] == f"[hlml] train of {dag_id} failed 1 times in a row"
        assert "loss is nan" in message.get_body(("html",)).get_content()
