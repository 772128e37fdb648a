# Rendered by plugsync for plugsync/hello-world:0.1.0@b9a4ea2f214f053bc53ee6e3465f7e38040b742d3ccd037827d6cfb90360415a. Do not edit: change the template.
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
