#!/usr/bin/env python3
"""Checks every pod template in Kubernetes manifests against the restricted Pod Security
Standard, plus this project's extras.

Usage: check_pss.py FILE...      exit 0 when every pod template passes, 1 otherwise
       check_pss.py --self-test  prove that removing any one requirement is caught

The restricted profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
as the API server's `pod-security.kubernetes.io/enforce: restricted` applies it, for every
container, init container and ephemeral container:
  - no hostNetwork, hostPID or hostIPC; no hostPath volumes, no hostPort, not privileged,
    no Windows hostProcess, procMount Default, only the safe sysctls;
  - volumes only of the types configMap, csi, downwardAPI, emptyDir, ephemeral, image,
    persistentVolumeClaim, projected, secret;
  - allowPrivilegeEscalation: false;
  - runAsNonRoot: true (pod or container) and runAsUser never 0;
  - seccompProfile RuntimeDefault or Localhost (pod or container), never Unconfined;
  - capabilities drop ALL, and add nothing but NET_BIND_SERVICE;
  - AppArmor and SELinux options within the allowed values.
Extras required here: runAsUser and runAsGroup set (pod or container), a read-only root
filesystem, and automountServiceAccountToken: false on the pod.
"""

import copy
import sys

import yaml

ALLOWED_VOLUME_KEYS = {
    "name", "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
    "persistentVolumeClaim", "projected", "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def pod_specs(doc):
    """Yields (path, pod spec) for every pod template in one manifest object."""
    if not isinstance(doc, dict):
        return
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield "spec", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
        yield "spec.template.spec", (spec.get("template") or {}).get("spec") or {}
    elif kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        yield "spec.jobTemplate.spec.template.spec", (job.get("template") or {}).get("spec") or {}
    elif kind == "PodTemplate":
        yield "template.spec", (doc.get("template") or {}).get("spec") or {}
    elif kind == "List":
        for item in doc.get("items") or []:
            yield from pod_specs(item)


def effective(container, pod_sc, key):
    """A container's security setting, falling back to the pod's where Kubernetes does."""
    sc = container.get("securityContext") or {}
    if sc.get(key) is not None:
        return sc.get(key)
    return pod_sc.get(key)


def check_pod(spec):
    """Returns the list of violations in one pod spec, each a human-readable sentence."""
    problems = []
    pod_sc = spec.get("securityContext") or {}

    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field}: true is forbidden")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false on the pod")
    for volume in spec.get("volumes") or []:
        extra = set(volume) - ALLOWED_VOLUME_KEYS
        if extra:
            problems.append(f"volume {volume.get('name')!r} has a forbidden type: {', '.join(sorted(extra))}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')!r} is not in the safe set")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("securityContext.windowsOptions.hostProcess is forbidden")
    if pod_sc.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser must not be 0")
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append("securityContext.seccompProfile.type must not be Unconfined")
    if (pod_sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append("securityContext.appArmorProfile.type must not be Unconfined")
    if (pod_sc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES:
        problems.append("securityContext.seLinuxOptions.type is not an allowed container type")

    containers = []
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(group) or []:
            containers.append((f"{group}[{container.get('name')}]", container))
    if not any(group.startswith("containers") for group, _ in containers):
        problems.append("the pod has no containers")

    for where, c in containers:
        sc = c.get("securityContext") or {}
        caps = sc.get("capabilities") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged: true is forbidden")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: windowsOptions.hostProcess is forbidden")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: procMount must be Default")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']} is forbidden")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
        if effective(c, pod_sc, "runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot must be true (pod or container securityContext)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser must not be 0")
        for key in ("runAsUser", "runAsGroup"):
            if effective(c, pod_sc, key) is None:
                problems.append(f"{where}: {key} must be set (pod or container securityContext)")
        seccomp = (effective(c, pod_sc, "seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(
                f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container), found {seccomp!r}"
            )
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{where}: appArmorProfile.type must not be Unconfined")
        if (sc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES:
            problems.append(f"{where}: seLinuxOptions.type is not an allowed container type")
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: securityContext.capabilities.drop must include ALL")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE, found {sorted(added)}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: securityContext.readOnlyRootFilesystem must be true")
    return problems


def check_files(paths):
    failures = 0
    templates = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = list(yaml.safe_load_all(f))
        for doc in docs:
            for spec_path, spec in pod_specs(doc):
                templates += 1
                name = f"{path}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')} ({spec_path})"
                problems = check_pod(spec)
                if problems:
                    failures += 1
                    print(f"FAIL {name}")
                    for problem in problems:
                        print(f"  - {problem}")
                else:
                    print(f"ok   {name}")
    if templates == 0:
        print("no pod templates found: nothing was checked", file=sys.stderr)
        return 1
    print(f"restricted Pod Security Standard: {templates - failures} of {templates} pod templates pass")
    return 1 if failures else 0


GOOD_POD = {
    "automountServiceAccountToken": False,
    "securityContext": {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [{
        "name": "c",
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }],
    "volumes": [{"name": "s", "secret": {"secretName": "x"}}],
}


def self_test():
    """Each mutation breaks one rule; the checker must notice every one of them."""
    assert check_pod(GOOD_POD) == [], check_pod(GOOD_POD)

    def container(pod):
        return pod["containers"][0]["securityContext"]

    mutations = {
        "pod runAsNonRoot removed": lambda p: p["securityContext"].pop("runAsNonRoot"),
        "pod runAsUser removed": lambda p: p["securityContext"].pop("runAsUser"),
        "pod runAsGroup removed": lambda p: p["securityContext"].pop("runAsGroup"),
        "runAsUser 0": lambda p: p["securityContext"].update(runAsUser=0),
        "seccomp removed": lambda p: p["securityContext"].pop("seccompProfile"),
        "seccomp Unconfined": lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "allowPrivilegeEscalation removed": lambda p: container(p).pop("allowPrivilegeEscalation"),
        "readOnlyRootFilesystem removed": lambda p: container(p).pop("readOnlyRootFilesystem"),
        "capabilities drop removed": lambda p: container(p).pop("capabilities"),
        "capability added": lambda p: container(p)["capabilities"].update(add=["NET_ADMIN"]),
        "privileged": lambda p: container(p).update(privileged=True),
        "automount token": lambda p: p.pop("automountServiceAccountToken"),
        "hostNetwork": lambda p: p.update(hostNetwork=True),
        "hostPath volume": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostPort": lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
        "init container without settings": lambda p: p.update(initContainers=[{"name": "i"}]),
        "unsafe sysctl": lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    }
    missed = []
    for name, mutate in mutations.items():
        pod = copy.deepcopy(GOOD_POD)
        mutate(pod)
        if not check_pod(pod):
            missed.append(name)
    if missed:
        print(f"self-test FAILED: not caught: {', '.join(missed)}")
        return 1
    print(f"self-test: all {len(mutations)} single-rule violations caught")
    return 0


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    if not argv or any(a.startswith("-") for a in argv):
        print("\n".join(__doc__.splitlines()[3:5]), file=sys.stderr)
        return 2
    return check_files(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
