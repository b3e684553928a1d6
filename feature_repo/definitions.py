"""Every Feast object of the project, in the one module the `feast` CLI reads (see .feastignore).

Feast imports each repository file by its bare name (`entities`, not `feature_repo.entities`), so a
definition module read that way would be a second copy of its objects next to the one the others
import. The definitions therefore live in their own modules and are only re-exported here.
"""

from feature_repo.entities import item, user  # noqa: F401
from feature_repo.feature_services import ctr_serving, ctr_training  # noqa: F401
from feature_repo.feature_views import (  # noqa: F401
    interest_features,
    item_embeddings,
    user_behaviour,
)
from feature_repo.sources import (  # noqa: F401
    interest_features_source,
    item_embeddings_source,
    user_behaviour_source,
)
