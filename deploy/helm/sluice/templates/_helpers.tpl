{{/* The chart's name. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: <release>-<chart>, or the release name when it contains the chart's. */}}
{{- define "sluice.fullname" -}}
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

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sluice.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "sluice.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "sluice.authSecretName" -}}
{{- default (printf "%s-auth" (include "sluice.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* A registry source's volume name: its name as a DNS label. */}}
{{- define "sluice.registryVolume" -}}
{{- printf "registry-%s" (. | lower | replace "." "-" | replace "_" "-") | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Refuse combinations that cannot work. */}}
{{- define "sluice.validate" -}}
{{- if and .Values.plainHttp.enabled .Values.serviceMonitor.enabled }}
{{- fail "plainHttp.enabled serves on the pod's loopback only, where Prometheus cannot scrape: turn serviceMonitor.enabled off, or serve TLS (tls.secretName)" }}
{{- end }}
{{- if eq .Values.database.backend "ducklake" }}
{{- if .Values.plainHttp.enabled }}
{{- fail "database.backend ducklake: the pods forward ingest and export runs to the lake's writer over the pod network, which plainHttp.enabled (loopback only) cannot reach: serve TLS (tls.secretName)" }}
{{- end }}
{{- if not .Values.database.ducklake.catalogSecret.name }}
{{- fail "database.backend ducklake needs database.ducklake.catalogSecret.name: a Secret holding the catalog's libpq connection string" }}
{{- end }}
{{- if not (hasPrefix "s3://" .Values.database.ducklake.dataPath) }}
{{- fail "database.backend ducklake needs database.ducklake.dataPath, an s3:// URL" }}
{{- end }}
{{- end }}
{{- range $i, $k := .Values.plugins.trust }}
{{- if not (and $k.secret $k.secret.name $k.secret.key) }}
{{- fail (printf "plugins.trust[%d] needs secret: {name, key}, the Secret and key holding its PEM public key" $i) }}
{{- end }}
{{- end }}
{{- if and .Values.auth.existingSecret .Values.auth.bearers }}
{{- fail "auth.existingSecret and auth.bearers are exclusive: name a Secret, or list the bearers for the chart to put in one" }}
{{- end }}
{{- end }}
