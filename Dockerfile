# One image for every alarmsieve role: runner, API server, Ray worker, and the stages under a real
# Pachyderm (`alarmsieve stage NAME` reads /pfs and writes /pfs/out).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    ALARMSIEVE_HOME=/var/lib/alarmsieve ALARMSIEVE_MODEL_DIR=/opt/alarmsieve/models

WORKDIR /opt/alarmsieve/src
COPY pyproject.toml README.md ./
COPY alarmsieve ./alarmsieve
COPY pipelines ./pipelines
RUN pip install '.[s3,postgres,ray]'

# The model is fetched at build time from its pinned URL and checked against its sha256
# (the same code path as at run time), so containers start without network access.
RUN python -c "from alarmsieve.vision.models import CATALOGUE, download_model; \
from pathlib import Path; download_model(CATALOGUE['yolox-nano'], Path('/opt/alarmsieve/models'))"

RUN useradd --system --uid 10001 --home-dir /var/lib/alarmsieve --create-home alarmsieve
USER alarmsieve
WORKDIR /var/lib/alarmsieve
ENTRYPOINT ["alarmsieve"]
CMD ["serve"]
