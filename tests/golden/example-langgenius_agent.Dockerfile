# Rendered by plugsync for langgenius/agent:0.0.14@26958a0e80a10655ce73812bdb7c35a66ce7b16f5ac346d298bda17ff85efd1e. Do not edit: change the template.
FROM langgenius/plugin-build-base-python:3.12
ENV INSTALL_METHOD=serverless \
    SERVERLESS_HOST=0.0.0.0 \
    SERVERLESS_PORT=8080 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
WORKDIR /app
COPY plugin.difypkg /tmp/plugin.difypkg
RUN python -m zipfile -e /tmp/plugin.difypkg /app && rm /tmp/plugin.difypkg
RUN if [ -f requirements.txt ]; then \
        pip install --no-cache-dir -r requirements.txt; \
    elif [ -f pyproject.toml ]; then \
        pip install --no-cache-dir .; \
    fi
RUN python -m compileall -q /app
USER 65532:65532
EXPOSE 8080
CMD ["python", "-m", "main"]
