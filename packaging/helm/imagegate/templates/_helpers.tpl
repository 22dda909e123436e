{{/* Labels on every object (Kubernetes' recommended app.kubernetes.io set). */}}
{{- define "imagegate.labels" -}}
app.kubernetes.io/name: imagegate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: imagegate
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The DaemonSet's selector: stable across upgrades. */}}
{{- define "imagegate.selectorLabels" -}}
app.kubernetes.io/name: imagegate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
