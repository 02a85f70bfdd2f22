#!/usr/bin/env bash
# Creates (or updates) a Cloud Scheduler job that launches the dpsynth flex
# template every night, on yesterday's date partition:
#
#   input   gs://$BUCKET/exports/{date}/part-*.csv
#   output  gs://$BUCKET/synthetic/{date}/
#
# {date} is filled in by dpsynth at launch time from run_date=yesterday (UTC),
# so the request body never changes. The budget ledger refuses a launch once
# the domain's lifetime epsilon would be passed; that launch then fails with
# one line in the launcher log, and nothing is written.
#
# Usage (after deploy/dataflow/README.md's build steps):
#   PROJECT=my-project REGION=europe-west1 BUCKET=my-dpsynth-bucket \
#   IMAGE=europe-west1-docker.pkg.dev/my-project/dpsynth/dpsynth:cpu \
#   SCHEDULER_SA=dpsynth-scheduler@my-project.iam.gserviceaccount.com \
#   bash deploy/schedule/cloud_scheduler.sh
#
# SCHEDULER_SA needs roles/dataflow.developer and roles/iam.serviceAccountUser
# on the workers' service account.
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
: "${IMAGE:?set IMAGE}" "${SCHEDULER_SA:?set SCHEDULER_SA}"
JOB=${JOB:-dpsynth-nightly}
SCHEDULE=${SCHEDULE:-"0 3 * * *"}           # 03:00 UTC, after the nightly export
TEMPLATE=${TEMPLATE:-gs://$BUCKET/templates/dpsynth-cpu.json}
DOMAIN=${DOMAIN:-customers-eu}
LIFETIME_EPSILON=${LIFETIME_EPSILON:-40}

body=$(mktemp)
trap 'rm -f "$body"' EXIT
cat > "$body" <<JSON
{
  "launchParameter": {
    "jobName": "$JOB",
    "containerSpecGcsPath": "$TEMPLATE",
    "parameters": {
      "input": "gs://$BUCKET/exports/{date}/part-*.csv",
      "output": "gs://$BUCKET/synthetic/{date}",
      "run_date": "yesterday",
      "text_column": "text",
      "label_column": "category",
      "label_values": "Restaurants,Shopping,Bars",
      "aggregator": "mean",
      "batch_size": "16",
      "clip": "3",
      "max_new_tokens": "48",
      "target_epsilon": "10",
      "budget_ledger": "gs://$BUCKET/budget/ledger.json",
      "lifetime_epsilon": "$LIFETIME_EPSILON",
      "privacy_unit_domain": "$DOMAIN"
    },
    "environment": {
      "sdkContainerImage": "$IMAGE",
      "machineType": "n2-standard-8",
      "maxWorkers": 20,
      "tempLocation": "gs://$BUCKET/tmp",
      "additionalExperiments": ["use_runner_v2"]
    }
  }
}
JSON

uri="https://dataflow.googleapis.com/v1b3/projects/$PROJECT/locations/$REGION/flexTemplates:launch"
# Re-running the script replaces the job with the current settings.
if gcloud scheduler jobs describe "$JOB" --location "$REGION" --project "$PROJECT" >/dev/null 2>&1; then
  gcloud scheduler jobs delete "$JOB" --location "$REGION" --project "$PROJECT" --quiet
fi
gcloud scheduler jobs create http "$JOB" \
  --project "$PROJECT" --location "$REGION" \
  --schedule "$SCHEDULE" --time-zone "Etc/UTC" \
  --uri "$uri" --http-method POST \
  --oauth-service-account-email "$SCHEDULER_SA" \
  --oauth-token-scope "https://www.googleapis.com/auth/cloud-platform" \
  --headers "Content-Type=application/json" \
  --message-body-from-file "$body"
echo "Cloud Scheduler job $JOB: $SCHEDULE (UTC) -> $TEMPLATE"
echo "Run it now: gcloud scheduler jobs run $JOB --location $REGION --project $PROJECT"
