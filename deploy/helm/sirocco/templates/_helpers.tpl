{{/* Names and labels shared by every object of the release. */}}
{{- define "sirocco.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sirocco.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: pass (list $ "router") */}}
{{- define "sirocco.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "sirocco.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sirocco.tokenSecret" -}}
{{- .Values.workerToken.existingSecret | default (printf "%s-worker-token" (include "sirocco.fullname" .)) -}}
{{- end -}}

{{/* The worker pools this mode runs: role names. */}}
{{- define "sirocco.pools" -}}
{{- if eq .Values.mode "colocated" -}}
colocated
{{- else if eq .Values.mode "disaggregated" -}}
prefill decode
{{- else -}}
{{- fail (printf "mode: colocated or disaggregated, got %q" .Values.mode) -}}
{{- end -}}
{{- end -}}

{{/* The cluster DNS name of a pool's headless Service: pass (list $ "prefill") */}}
{{- define "sirocco.poolHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s.%s.svc.cluster.local" (include "sirocco.fullname" $root) (index . 1) $root.Release.Namespace -}}
{{- end -}}

{{- define "sirocco.modelVolume" -}}
{{- if .Values.model.claim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.model.claim }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "sirocco.modelMount" -}}
{{- if .Values.model.claim }}
- name: models
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "sirocco.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "sirocco.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Pod-level settings every component shares: pass (list $ componentValues) */}}
{{- define "sirocco.podSpecCommon" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
serviceAccountName: {{ include "sirocco.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
{{- with $root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
