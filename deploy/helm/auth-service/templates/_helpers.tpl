{{/*
Names and labels, as `helm create` lays them out (Helm's best practices):
name, fullname (at most 63 characters, a DNS label), chart, the standard labels and the
selector labels. Pods of the server, the migration and the prune job differ in
app.kubernetes.io/component, so selectors never match a job's pods.
*/}}

{{- define "auth-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "auth-service.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "auth-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release (a Deployment's selector is immutable). */}}
{{- define "auth-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auth-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The server pods' selector: the selector labels plus the component. */}}
{{- define "auth-service.serverSelectorLabels" -}}
{{ include "auth-service.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "auth-service.labels" -}}
helm.sh/chart: {{ include "auth-service.chart" . }}
{{ include "auth-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "auth-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "auth-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "auth-service.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The name of the Secret holding tls.crt and tls.key, or "" without TLS. */}}
{{- define "auth-service.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "auth-service.fullname" .) }}
{{- else }}
{{- .Values.tls.existingSecret }}
{{- end }}
{{- end }}

{{/* The in-cluster DNS names of both Services, for the certificate and NOTES.txt. */}}
{{- define "auth-service.dnsNames" -}}
{{- $ns := .Release.Namespace }}
{{- range $svc := list (include "auth-service.fullname" .) (printf "%s-headless" (include "auth-service.fullname" .)) }}
- {{ $svc }}
- {{ $svc }}.{{ $ns }}
- {{ $svc }}.{{ $ns }}.svc
- {{ $svc }}.{{ $ns }}.svc.cluster.local
{{- end }}
{{- end }}

{{/*
The pod security settings of every pod (server, migration, prune): the restricted Pod
Security Standard plus this project's extras (deploy/check_pss.py).
*/}}
{{- define "auth-service.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "auth-service.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/*
The database URL file and the PostgreSQL CA, shared by every pod. Call with
(dict "ctx" $ "secret" NAME "key" KEY).
*/}}
{{- define "auth-service.dbVolumeMounts" -}}
- name: db
  mountPath: /etc/auth-service/db
  readOnly: true
{{- if .ctx.Values.database.caConfigMap.name }}
- name: postgres-ca
  mountPath: /etc/auth-service/postgres-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "auth-service.dbVolumes" -}}
- name: db
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: url
{{- if .ctx.Values.database.caConfigMap.name }}
- name: postgres-ca
  configMap:
    name: {{ .ctx.Values.database.caConfigMap.name }}
    items:
      - key: {{ .ctx.Values.database.caConfigMap.key }}
        path: ca.crt
{{- end }}
{{- end }}

{{/* Variables every pod carries: the database URL file, the log format, the pod name. */}}
{{- define "auth-service.commonEnv" -}}
# The password is never in the pod spec or the environment, only in this file.
- name: AUTH_SERVICE_DATABASE_URL_FILE
  value: /etc/auth-service/db/url
# The pod name, as PostgreSQL's application_name: pg_stat_activity shows which replica
# holds which connection.
- name: AUTH_SERVICE_REPLICA_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: AUTH_SERVICE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}

{{/* OTEL_RESOURCE_ATTRIBUTES from a map: k=v pairs, comma-separated, sorted by key. */}}
{{- define "auth-service.otelResourceAttributes" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%v" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
