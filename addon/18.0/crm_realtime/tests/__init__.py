from . import test_capture
from . import test_token_route
