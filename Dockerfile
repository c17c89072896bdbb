# The Airflow image every component of docker-compose.yml runs: the official Apache Airflow image
# plus this provider (with the Celery, PostgreSQL and example extras) and the example DAGs.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
COPY --chown=airflow:0 pyproject.toml README.md CHANGELOG.md /opt/hlml/
COPY --chown=airflow:0 airflow_provider_hlml /opt/hlml/airflow_provider_hlml
# Pinning apache-airflow keeps pip from moving the image's Airflow while resolving the provider.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/hlml[celery,postgres,examples]"
COPY --chown=airflow:0 dags /opt/airflow/dags
