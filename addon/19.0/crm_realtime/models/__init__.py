from . import crm_realtime_notification
from . import res_config_settings
