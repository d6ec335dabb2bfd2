{{/*
The name of the chart's objects: the release name, followed by "-agimo"
unless it already contains "agimo". At most 63 characters (a label value).
*/}}
{{- define "agimo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
The name of cluster-scoped objects (ClusterRole and its binding): the full
name and the release namespace, so that releases of the same name in two
namespaces do not collide.
*/}}
{{- define "agimo.clusterName" -}}
{{- printf "%s-%s" (include "agimo.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The labels the Deployment selects its pods by, and the Gateway Services too
(--gateway-service-selector): fixed, so that no value can make them differ.
*/}}
{{- define "agimo.selectorLabels" -}}
app.kubernetes.io/name: agimo
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* --gateway-service-selector: the selector labels as k=v,k=v. */}}
{{- define "agimo.selector" -}}
app.kubernetes.io/name=agimo,app.kubernetes.io/instance={{ .Release.Name }}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "agimo.labels" -}}
{{ include "agimo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "agimo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agimo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "agimo.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
