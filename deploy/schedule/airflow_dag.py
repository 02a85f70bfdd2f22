"""Example Airflow DAG: launch the dpsynth flex template once a day, per date partition.

An example to copy into your Airflow deployment (apache-airflow with the
apache-airflow-providers-google package); dpsynth does not depend on Airflow.

Airflow's logical date `{{ ds }}` is passed as `run_date`, so a backfill or a
re-run of an old day reads and writes that day's partition:

    input   gs://BUCKET/exports/{date}/part-*.csv
    output  gs://BUCKET/synthetic/{date}/

Every launch, backfills included, is charged to the privacy-unit domain in
the budget ledger; the launch is refused (the task fails, nothing is written)
once the domain's lifetime epsilon would be passed. Do not retry such a
failure: `retries` below is for transient launch errors, and a refused launch
fails the same way each time.
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import (
    DataflowStartFlexTemplateOperator,
)

PROJECT = "my-project"
REGION = "europe-west1"
BUCKET = "my-dpsynth-bucket"
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/dpsynth/dpsynth:cpu"
TEMPLATE = f"gs://{BUCKET}/templates/dpsynth-cpu.json"

# Keys are `dpsynth run` options (deploy/dataflow/metadata.json); values are strings.
DPSYNTH_PARAMETERS = {
    "input": f"gs://{BUCKET}/exports/{{date}}/part-*.csv",
    "output": f"gs://{BUCKET}/synthetic/{{date}}",
    "run_date": "{{ ds }}",
    "text_column": "text",
    "label_column": "category",
    "label_values": "Restaurants,Shopping,Bars",
    "aggregator": "mean",
    "batch_size": "16",
    "clip": "3",
    "max_new_tokens": "48",
    "target_epsilon": "10",
    "budget_ledger": f"gs://{BUCKET}/budget/ledger.json",
    "lifetime_epsilon": "40",
    "privacy_unit_domain": "customers-eu",
}

with DAG(
    dag_id="dpsynth_daily",
    schedule="0 3 * * *",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=10)},
    tags=["dpsynth"],
) as dag:
    DataflowStartFlexTemplateOperator(
        task_id="synthesise",
        project_id=PROJECT,
        location=REGION,
        wait_until_finished=True,
        body={
            "launchParameter": {
                "jobName": "dpsynth-{{ ds_nodash }}",
                "containerSpecGcsPath": TEMPLATE,
                "parameters": DPSYNTH_PARAMETERS,
                "environment": {
                    "sdkContainerImage": IMAGE,
                    "machineType": "n2-standard-8",
                    "maxWorkers": 20,
                    "tempLocation": f"gs://{BUCKET}/tmp",
                    "additionalExperiments": ["use_runner_v2"],
                },
            }
        },
    )
