"""The upgrade path: bring every version registered before the upgrade up to the new lookups.

For each model version, without touching what is already right:

- ``model_uuid``: the LoggedModel id of its source (``models:/m-...`` or the version's
  ``model_id``), else the ``model_uuid`` in its ``MLmodel`` (``runs:/...`` sources of MLflow 2
  and of the old class), else a new random one when the ``MLmodel`` records none.
- ``is_baseline``, ``model_type``, ``baseline_model_id``, ``contributor``: from the old tags, the
  old run params (``is_baseline``, ``model_type``, ``baseline_model_id``, ``contributor_address``)
  and the registered name (``hokusai_<type>_baseline`` / ``<stem>_improved``); ``contributor`` is
  lower-cased (the old class kept the EIP-55 mixed case), so lookups match any case.
- a version in MLflow's retired ``Production`` stage gets the ``production`` alias when its model
  has none.
- a ``lifecycle_stage`` tag an earlier release wrote lower-case (``production``, ``archived``) gets
  the stage name the old callers compare against (``Production``, ``Archived``).

Idempotent (a second run changes nothing), ``dry_run`` changes nothing, and what cannot be
derived is reported with the reason instead of stopping the run.
"""

from __future__ import annotations

import logging
import uuid as uuid_lib
from collections.abc import Callable, Mapping
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from hokusai_registry.contract import (
    BASELINE_SUFFIX,
    IMPROVED_SUFFIX,
    MODEL_TYPES,
    MODEL_UUID_RE,
    is_contributor_address,
    parse_baseline_id,
)
from hokusai_registry.errors import RegistryUnavailableError
from worker.registration import compat, reads, tags
from worker.registration.mlflow_errors import mlflow_boundary
from worker.registration.promotion import promote_model_to_production
from worker.registration.reads import RegistryStore
from worker.registration.results import model_id_from_source

logger = logging.getLogger(__name__)


def backfill(
    store: RegistryStore,
    *,
    dry_run: bool = False,
    on_progress: Callable[[ModelVersion], None] | None = None,
) -> dict[str, Any]:
    """Tag every version with what the new lookups need; report what was (or would be) done.

    Returns:
        ``scanned``; ``already_tagged`` (had a ``model_uuid``); ``tagged`` (``model_uuid`` set);
        ``completed`` (other tags set, per version); ``promoted`` (retired stage -> alias);
        ``unresolved`` (no uuid, with the reason); ``incomplete`` (tags that could not be derived,
        with the reason); ``dry_run``.
    """
    report: dict[str, Any] = {
        "scanned": 0,
        "already_tagged": 0,
        "tagged": [],
        "completed": [],
        "promoted": [],
        "unresolved": [],
        "incomplete": [],
    }
    client = store.client
    aliases: dict[str, dict[str, str]] = {}
    for version in reads.search_versions(store, None):
        report["scanned"] += 1
        where = {"model_name": version.name, "version": str(version.version)}
        try:
            version_tags = dict(version.tags or {})
            changes: dict[str, str] = {}
            if tags.TAG_MODEL_UUID in version_tags:
                report["already_tagged"] += 1
            else:
                found, reason = _uuid_of_version(version)
                if found is None:
                    report["unresolved"].append({**where, "reason": reason})
                else:
                    changes[tags.TAG_MODEL_UUID] = found
                    report["tagged"].append({**where, "model_uuid": found})
            run = reads.run_of(store, version.run_id)
            params = dict(run.data.params) if run else {}
            derived, problems = derive_tags(store, version.name, version_tags, params)
            if derived:
                report["completed"].append({**where, "tags": derived})
            if problems:
                report["incomplete"].append({**where, "reasons": problems})
            changes.update(derived)
            if not dry_run:
                with mlflow_boundary(f"tagging {version.name}/{version.version}"):
                    for key, value in changes.items():
                        client.set_model_version_tag(version.name, version.version, key, value)
            if version.current_stage == tags.PRODUCTION_STAGE:
                if version.name not in aliases:
                    with mlflow_boundary(f"reading {version.name}"):
                        aliases[version.name] = dict(client.get_registered_model(version.name).aliases or {})
                if tags.PRODUCTION_ALIAS not in aliases[version.name]:
                    aliases[version.name][tags.PRODUCTION_ALIAS] = str(version.version)
                    report["promoted"].append(where)
                    if not dry_run:
                        promote_model_to_production(store, version.name, str(version.version))
        finally:
            if on_progress is not None:
                on_progress(version)
    report["dry_run"] = dry_run
    return report


def derive_tags(
    store: RegistryStore, name: str, version_tags: Mapping[str, str], params: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The tags a version lacks (or has in the old form), and why any could not be derived."""
    new: dict[str, str] = {}
    problems: list[str] = []
    baseline_id = version_tags.get(tags.TAG_BASELINE_ID) or params.get(tags.PARAM_BASELINE_ID)
    if tags.TAG_IS_BASELINE not in version_tags:
        if params.get(tags.PARAM_IS_BASELINE) in {tags.PARAM_TRUE, tags.PARAM_FALSE}:
            new[tags.TAG_IS_BASELINE] = tags.TRUE if params[tags.PARAM_IS_BASELINE] == tags.PARAM_TRUE else tags.FALSE
        elif name.endswith(BASELINE_SUFFIX) and not baseline_id:
            new[tags.TAG_IS_BASELINE] = tags.TRUE
        elif name.endswith(IMPROVED_SUFFIX) or baseline_id:
            new[tags.TAG_IS_BASELINE] = tags.FALSE
        else:
            problems.append("is_baseline: the name ends in neither _baseline nor _improved and no run param says")
    is_baseline = (version_tags.get(tags.TAG_IS_BASELINE) or new.get(tags.TAG_IS_BASELINE)) == tags.TRUE
    if not is_baseline and baseline_id and tags.TAG_BASELINE_ID not in version_tags:
        new[tags.TAG_BASELINE_ID] = baseline_id
    contributor = version_tags.get(tags.TAG_CONTRIBUTOR) or params.get(tags.PARAM_CONTRIBUTOR)
    if contributor is not None and not is_baseline:
        if not is_contributor_address(contributor):
            problems.append(f"contributor: {contributor!r} is not a wallet address")
        elif version_tags.get(tags.TAG_CONTRIBUTOR) != contributor.lower():
            new[tags.TAG_CONTRIBUTOR] = contributor.lower()
    if tags.TAG_MODEL_TYPE not in version_tags:
        model_type = (
            params.get(tags.PARAM_MODEL_TYPE) or tags.model_type_of_name(name) or _type_of_baseline(store, baseline_id)
        )
        if model_type in MODEL_TYPES:
            new[tags.TAG_MODEL_TYPE] = str(model_type)
        else:
            problems.append(f"model_type: cannot be derived (found {model_type!r}); tag it by hand")
    stage = version_tags.get(tags.TAG_LIFECYCLE_STAGE)
    if stage is not None and tags.lifecycle_stage(stage) != stage:
        new[tags.TAG_LIFECYCLE_STAGE] = str(tags.lifecycle_stage(stage))
    return new, problems


def _type_of_baseline(store: RegistryStore, baseline_id: str | None) -> str | None:
    try:
        ref = parse_baseline_id(baseline_id)
    except ValueError:
        return None
    if ref.model_type is not None:
        return ref.model_type
    try:
        return compat.baseline_model_type(store, ref)
    except RegistryUnavailableError:
        raise
    except ValueError:
        return None


def _uuid_of_version(version: ModelVersion) -> tuple[str | None, str]:
    """(uuid, how it was found) or (None, why not)."""
    found = model_id_from_source(version.source) or getattr(version, "model_id", None)
    if found:
        return str(found), "logged model"
    try:
        with mlflow_boundary(f"reading model {version.name}/{version.version}"):
            info = mlflow.models.get_model_info(str(version.source))
    except RegistryUnavailableError:
        raise
    except MlflowException as exc:
        return None, f"cannot read the model at {version.source}: {exc.message}"
    except Exception as exc:  # a bad MLmodel or a missing artifact plugin: report it, keep going
        logger.warning("cannot read the model of %s/%s: %s", version.name, version.version, exc)
        return None, f"cannot read the model at {version.source}: {type(exc).__name__}: {exc}"
    if info.model_uuid and MODEL_UUID_RE.fullmatch(info.model_uuid):
        return info.model_uuid, "MLmodel"
    # An MLmodel written without a uuid (by hand, or by a very old MLflow): give the version one.
    return uuid_lib.uuid4().hex, "assigned"
