"""Settings: one frozen object from newsletter.toml + environment + CLI overrides.

Precedence, lowest first: built-in defaults, a Jekyll ``_config.yml`` (when
``[site] jekyll_config`` names one), ``newsletter.toml``, CLI overrides.
Secrets never live in the file: it names environment variables instead.

The dataclasses are in `settings`, reading the file into them in `loading`,
the checks a configuration must pass in `checks`; every name is here too.
"""

from newsletter.config.checks import MAX_CONFIRM_HOURS, MAX_PROCESSES
from newsletter.config.loading import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    find_config,
    load_settings,
    parse_duration,
    parse_since,
    read_jekyll_config,
)
from newsletter.config.settings import (
    DEFAULT_PERMALINK,
    PERMALINK_STYLES,
    ZERO,
    BouncesSettings,
    DatabaseSettings,
    DeliverySettings,
    DkimSettings,
    EmailSettings,
    ListSettings,
    ScheduleSettings,
    Settings,
    SignupSettings,
    SiteSettings,
    SmtpSettings,
    UnsubscribeSettings,
    WebSettings,
    utcnow,
    with_overrides,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "DEFAULT_PERMALINK",
    "MAX_CONFIRM_HOURS",
    "MAX_PROCESSES",
    "PERMALINK_STYLES",
    "ZERO",
    "BouncesSettings",
    "DatabaseSettings",
    "DeliverySettings",
    "DkimSettings",
    "EmailSettings",
    "ListSettings",
    "ScheduleSettings",
    "Settings",
    "SignupSettings",
    "SiteSettings",
    "SmtpSettings",
    "UnsubscribeSettings",
    "WebSettings",
    "find_config",
    "load_settings",
    "parse_duration",
    "parse_since",
    "read_jekyll_config",
    "utcnow",
    "with_overrides",
]
