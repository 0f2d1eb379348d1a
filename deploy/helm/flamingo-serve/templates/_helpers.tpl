{{- define "flamingo.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flamingo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flamingo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "flamingo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "flamingo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flamingo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "flamingo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flamingo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Seconds from "stop this pod" to SIGKILL: preStop sleep, then the server's whole drain, plus a margin. */}}
{{- define "flamingo.terminationGracePeriod" -}}
{{- add .Values.preStopSleepSeconds .Values.server.drainTimeoutSeconds .Values.terminationMarginSeconds -}}
{{- end -}}

{{/* PromQL selector of this release's server pods (labels added by the ServiceMonitor scrape). */}}
{{- define "flamingo.promSelector" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "flamingo.fullname" . }}"
{{- end -}}

{{- define "flamingo.checks" -}}
{{- if lt (int .Values.server.drainTimeoutSeconds) (int .Values.server.requestTimeoutSeconds) -}}
{{- fail "server.drainTimeoutSeconds must be >= server.requestTimeoutSeconds: a drain would cut generations that would have finished" -}}
{{- end -}}
{{- if not (has .Values.autoscaling.mode (list "none" "hpa" "keda")) -}}
{{- fail (printf "autoscaling.mode must be none, hpa or keda (got %q)" .Values.autoscaling.mode) -}}
{{- end -}}
{{- if not (has .Values.model.volume.type (list "pvc" "hostPath")) -}}
{{- fail (printf "model.volume.type must be pvc or hostPath (got %q)" .Values.model.volume.type) -}}
{{- end -}}
{{- if le (float64 .Values.autoscaling.targetLoadPerReplica) 0.0 -}}
{{- fail "autoscaling.targetLoadPerReplica must be > 0" -}}
{{- end -}}
{{- end -}}
