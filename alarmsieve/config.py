"""Process-wide settings, read from the environment (``ALARMSIEVE_*``).

One pydantic-settings model so that every knob has a name, a type and a default in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from alarmsieve.errors import AlarmsieveError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALARMSIEVE_", extra="ignore")

    home: Path = Field(default=Path(".alarmsieve"), description="workspace folder")
    catalog_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the catalog; default: SQLite file in the workspace"
    )
    object_store: str | None = Field(
        default=None, description="object store location; default: the objects/ folder of the workspace"
    )
    model_dir: Path | None = Field(default=None, description="folder holding detector model files")
    executor: Literal["local", "ray"] = Field(
        default="local", description="where workers run: local processes or Ray actors"
    )
    ray_address: str | None = Field(default=None, description="Ray cluster address; unset: a private local cluster")
    runners: Literal["auto", "single", "shared"] = Field(
        default="auto",
        description="single: this runner works alone; shared: runners on one catalog share jobs and "
        "datums through leases; auto: shared unless the catalog is SQLite",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="shared runners: how long a claimed datum stays with a runner that stops renewing it",
    )
    model_cache: Path = Field(
        default=Path.home() / ".cache" / "alarmsieve" / "models",
        description="user cache for downloaded models",
    )

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_catalog_url(self) -> str:
        if self.catalog_url:
            return self.catalog_url
        return f"sqlite:///{self.resolved_home / 'catalog.sqlite'}"

    @property
    def resolved_object_store(self) -> str:
        return self.object_store or str(self.resolved_home / "objects")


class ConfigError(AlarmsieveError):
    """An ``ALARMSIEVE_*`` environment variable with a value that cannot be used."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"ALARMSIEVE_{'_'.join(str(part) for part in err['loc']).upper()}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"bad configuration in the environment: {problems}; fix or unset the variable") from None
