from typing import Any

from dify_plugin import ToolProvider


class HelloProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        # No credentials: the tool only formats a greeting.
        return None
