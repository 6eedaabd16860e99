{{/* Names and labels, as `helm create` lays them out. */}}

{{- define "auth-agent-example.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "auth-agent-example.fullname" -}}
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

{{- define "auth-agent-example.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "auth-agent-example.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auth-agent-example.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "auth-agent-example.labels" -}}
helm.sh/chart: {{ include "auth-agent-example.chart" . }}
{{ include "auth-agent-example.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "auth-agent-example.tlsSecret" -}}
{{- if .Values.agent.tls.certManager.enabled }}
{{- printf "%s-auth-client" (include "auth-agent-example.fullname" .) }}
{{- else }}
{{- .Values.agent.tls.existingSecret }}
{{- end }}
{{- end }}

{{- define "auth-agent-example.tokenSecret" -}}
{{- default (printf "%s-auth-token" (include "auth-agent-example.fullname" .)) .Values.agent.tokenSecret.name }}
{{- end }}

{{- define "auth-agent-example.validate" -}}
{{- $tls := .Values.agent.tls }}
{{- if and $tls.existingSecret $tls.certManager.enabled }}
{{- fail "agent.tls.existingSecret and agent.tls.certManager.enabled are mutually exclusive: either mount your own client certificate Secret or let cert-manager issue one, not both" }}
{{- end }}
{{- if not (or $tls.existingSecret $tls.certManager.enabled) }}
{{- fail "the agent talks to auth-service over mutual TLS: set agent.tls.existingSecret or agent.tls.certManager.enabled" }}
{{- end }}
{{- if not (hasPrefix "https://" .Values.agent.server) }}
{{- fail (printf "agent.server must be an https:// URL (mutual TLS), got %q" .Values.agent.server) }}
{{- end }}
{{- end }}
