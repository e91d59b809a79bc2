"""Launch template versions as EC2 keeps them, where moto 5.2.5 falls short: CreateLaunchTemplateVersion
ignores SourceVersion (the new version would hold only the data sent, losing the instance type,
network and everything else) and ClientToken, and there is no DeleteLaunchTemplateVersions. The
world answers these three calls (and DescribeLaunchTemplateVersions, which must not list a deleted
version) from moto's templates."""

from __future__ import annotations

import copy
from typing import Any

from moto.ec2.exceptions import EC2ClientError


class LaunchTemplates:
    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], int] = {}  # (Region, template, ClientToken) -> version
        self.deleted: set[tuple[str, str, int]] = set()  # (Region, template, version)

    def answer(self, backend: Any, region: str, operation: str, params: dict[str, Any]) -> Any:
        """The world's answer to a launch template call, or None for moto to answer."""
        if operation == "DescribeLaunchTemplates":
            unknown = [i for i in params.get("LaunchTemplateIds", []) if i not in backend.launch_templates]
            if unknown:
                return EC2ClientError(
                    "InvalidLaunchTemplateId.NotFound",
                    "At least one of the launch templates specified in the request does not exist.",
                )
            return None
        if operation == "CreateLaunchTemplateVersion":
            return self._create_version(backend, region, params)
        if operation == "DeleteLaunchTemplateVersions":
            return self._delete_versions(backend, region, params)
        if operation == "DescribeLaunchTemplateVersions" and params.get("LaunchTemplateId"):
            return self._describe_versions(backend, region, params)
        if operation == "ModifyLaunchTemplate" and params.get("DefaultVersion"):
            template = _template(backend, params)
            if isinstance(template, EC2ClientError):
                return template
            if (region, template.id, int(params["DefaultVersion"])) in self.deleted:
                return _version_not_found(template.id, params["DefaultVersion"])
        return None

    def _create_version(self, backend: Any, region: str, params: dict[str, Any]) -> Any:
        template = _template(backend, params)
        if isinstance(template, EC2ClientError):
            return template
        token = str(params.get("ClientToken") or "")
        if token and (region, template.id, token) in self._tokens:
            return _version_answer(template, template.get_version(self._tokens[(region, template.id, token)]))
        data = dict(params.get("LaunchTemplateData") or {})
        if source := params.get("SourceVersion"):
            number = template.default_version_number if source == "$Default" else source
            if source == "$Latest":
                number = template.latest_version_number
            if (region, template.id, int(number)) in self.deleted or int(number) > len(template.versions):
                return _version_not_found(template.id, source)
            data = {**copy.deepcopy(template.get_version(number).data), **data}
        version = template.create_version(data, params.get("VersionDescription", ""))
        if token:
            self._tokens[(region, template.id, token)] = version.number
        return _version_answer(template, version)

    def _delete_versions(self, backend: Any, region: str, params: dict[str, Any]) -> Any:
        template = _template(backend, params)
        if isinstance(template, EC2ClientError):
            return template
        deleted, refused = [], []
        for number in [int(n) for n in params.get("Versions", [])]:
            key = (region, template.id, number)
            if template.default_version_number == number:
                refused.append((number, "launchTemplateVersionIsDefault", "the default version cannot be deleted"))
            elif key in self.deleted or number > len(template.versions):
                refused.append((number, "launchTemplateVersionDoesNotExist", "the version does not exist"))
            else:
                self.deleted.add(key)
                deleted.append(number)
        ids = {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name}
        return {
            "SuccessfullyDeletedLaunchTemplateVersions": [{**ids, "VersionNumber": n} for n in deleted],
            "UnsuccessfullyDeletedLaunchTemplateVersions": [
                {**ids, "VersionNumber": n, "ResponseError": {"Code": code, "Message": message}}
                for n, code, message in refused
            ],
        }

    def _describe_versions(self, backend: Any, region: str, params: dict[str, Any]) -> Any:
        template = _template(backend, params)
        if isinstance(template, EC2ClientError):
            return template
        live = [v for v in template.versions if (region, template.id, v.number) not in self.deleted]
        wanted = params.get("Versions") or []
        if wanted:
            numbers = {
                template.default_version_number
                if w == "$Default"
                else max(v.number for v in live)
                if w == "$Latest"
                else int(w)
                for w in wanted
            }
            live = [v for v in live if v.number in numbers]
        return {"LaunchTemplateVersions": [_version_answer(template, v)["LaunchTemplateVersion"] for v in live]}


def _template(backend: Any, params: dict[str, Any]) -> Any:
    template_id = params.get("LaunchTemplateId")
    if template_id not in backend.launch_templates:
        return EC2ClientError(
            "InvalidLaunchTemplateId.NotFound",
            f"The specified launch template, with template ID {template_id}, does not exist.",
        )
    return backend.launch_templates[template_id]


def _version_not_found(template_id: str, version: object) -> EC2ClientError:
    return EC2ClientError(
        "InvalidLaunchTemplateId.VersionNotFound",
        f"Could not find launch template version {version} for launch template with ID {template_id}.",
    )


def _version_answer(template: Any, version: Any) -> dict[str, Any]:
    return {
        "LaunchTemplateVersion": {
            "CreateTime": version.create_time,
            "DefaultVersion": template.is_default(version),
            "LaunchTemplateData": version.data,
            "LaunchTemplateId": template.id,
            "LaunchTemplateName": template.name,
            "VersionDescription": version.description,
            "VersionNumber": version.number,
        }
    }
