{{/*
The rules that tie two values together. values.schema.json checks each value on its own
(types, ranges, formats, unknown keys); JSON Schema cannot compare two numbers, and its
if/then errors name only the failing key ("value must be ''"), so these live here and
fail the render with a sentence that names both values and the way out.
Included once, from deployment.yaml (always rendered).
*/}}
{{- define "auth-service.validate" -}}
{{- $v := .Values }}
{{- if and $v.tls.existingSecret $v.tls.certManager.enabled }}
{{- fail "tls.existingSecret and tls.certManager.enabled are mutually exclusive: either mount your own TLS Secret or let cert-manager issue one, not both" }}
{{- end }}
{{- if and $v.tls.certManager.enabled (not $v.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name: the cert-manager Issuer or ClusterIssuer that signs the certificate" }}
{{- end }}
{{- if and $v.tls.clientCA.enabled (not (include "auth-service.tlsSecret" .)) }}
{{- fail "tls.clientCA.enabled needs TLS on the gRPC port: set tls.existingSecret or tls.certManager.enabled" }}
{{- end }}
{{- if and $v.validateAllow (not $v.tls.clientCA.enabled) }}
{{- fail "validateAllow needs tls.clientCA.enabled: the allow-list matches SANs of verified client certificates, and without a client CA there are none" }}
{{- end }}
{{- if and $v.hpa.enabled (eq (int $v.replicas) 0) }}
{{- fail "replicas: 0 with hpa.enabled: the HorizontalPodAutoscaler never scales from zero and would not keep it at zero either; set hpa.enabled=false to stop the service" }}
{{- end }}
{{- if and $v.hpa.enabled (gt (int $v.hpa.minReplicas) (int $v.hpa.maxReplicas)) }}
{{- fail (printf "hpa.minReplicas (%d) is greater than hpa.maxReplicas (%d)" (int $v.hpa.minReplicas) (int $v.hpa.maxReplicas)) }}
{{- end }}
{{- if eq (int $v.ports.grpc) (int $v.ports.http) }}
{{- fail (printf "ports.grpc and ports.http are both %d: gRPC and the HTTP side port need a port each" (int $v.ports.grpc)) }}
{{- end }}
{{- if and $v.migration.enabled (not $v.migration.existingSecret) }}
{{- fail "migration.enabled needs migration.existingSecret: the Secret holding the owner role's database URL (or set migration.enabled=false to migrate at pod startup)" }}
{{- end }}
{{- if and $v.notify.signingSecret.existingSecret (not $v.notify.webhook.existingSecret) }}
{{- fail "notify.signingSecret.existingSecret needs notify.webhook.existingSecret: the key signs webhook notices, and without a webhook none are sent" }}
{{- end }}
{{- end }}
