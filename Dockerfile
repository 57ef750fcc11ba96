# The copier as a container image, so the nightly run needs neither GitHub nor PyPI:
# CodeBuild (NO_SOURCE project, inline buildspec "cd /app && python copier.py") and
# AWS Batch (this ENTRYPOINT) both run it. Build and push to ECR: docs/aws.md, "Custom image".
# A job needs only TABLES in its environment; COPIER_SSM_PREFIX comes from the project or
# job definition, the connection settings from Parameter Store.
FROM python:3.11-slim-bookworm

# Unbuffered: the JSON lines reach CloudWatch Logs as they are written, not at exit.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Requirements first: the layer is reused when only the code changes.
# psycopg2-binary ships its own libpq, so no compiler or apt packages are needed.
COPY requirements.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt

# The worker and the one module it shares with the code around it (runlog.py: standard library).
COPY copier.py runlog.py ./

# AWS's CA bundle for RDS and Aurora, fetched when the image is built: setup stores
# sslrootcert=rds-global-bundle.pem (relative to /app) for *.rds.amazonaws.com hosts.
RUN python -c "import urllib.request as u; u.urlretrieve('https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem', 'rds-global-bundle.pem')" \
    && chmod 644 rds-global-bundle.pem

# The copier writes nothing to disk: it runs as an unprivileged user with no home.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin copier
USER copier

ENTRYPOINT ["python", "copier.py"]
