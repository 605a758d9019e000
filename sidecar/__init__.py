"""crm-realtime: live Socket.IO events from a CRM's PostgreSQL tables."""

__version__ = '0.1.0'
