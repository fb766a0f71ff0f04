# One image for web, worker and beat; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAILER_DATA_DIR=/var/lib/mailer

WORKDIR /app

# Dependencies first, so a code change does not re-download them.
COPY pyproject.toml ./
RUN mkdir -p mailer && touch mailer/__init__.py \
 && pip install . \
 && pip uninstall -y mailer \
 && rm -rf mailer build *.egg-info

# Editable, so the email templates in /app/templates stay where config.py looks for them.
COPY . .
RUN pip install --no-deps -e . \
 && useradd --system --home-dir /var/lib/mailer --create-home mailer \
 && chown -R mailer /var/lib/mailer

USER mailer
EXPOSE 8000
# worker.py lives in /app, so `celery -A worker ...` works from here.
CMD ["mailer", "web", "--host", "0.0.0.0", "--port", "8000"]
