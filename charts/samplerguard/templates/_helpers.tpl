{{- define "sg.fullname" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- define "sg.labels" -}}
app.kubernetes.io/part-of: samplerguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "sg.image" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}
{{- if $root.Values.image.digest -}}{{ $root.Values.image.repository }}/{{ $name }}@{{ $root.Values.image.digest }}
{{- else -}}{{ $root.Values.image.repository }}/{{ $name }}:{{ $root.Values.image.tag }}{{- end -}}
{{- end -}}
{{- define "sg.tlsSecret" -}}{{ include "sg.fullname" . }}-webhook-tls{{- end -}}
{{- define "sg.escrowSecret" -}}{{ include "sg.fullname" . }}-escrow{{- end -}}
{{- define "sg.drbgSecret" -}}{{ include "sg.fullname" . }}-drbg{{- end -}}
{{- define "sg.excluded" -}}
- kube-system
- {{ .Release.Namespace }}
{{- range .Values.excludedNamespaces }}
- {{ . }}
{{- end }}
{{- end -}}
{{- define "sg.otel" -}}
- name: SAMPLERGUARD_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
{{- if .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.telemetry.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.telemetry.otlpProtocol | quote }}
{{- end }}
{{- end -}}
{{- /* The caBundle the operator wrote last time, so `helm upgrade` does not blank it. */ -}}
{{- define "sg.caBundle" -}}
{{- $root := index . 0 -}}{{- $kind := index . 1 -}}{{- $name := index . 2 -}}
{{- $existing := lookup "admissionregistration.k8s.io/v1" $kind "" $name -}}
{{- if and $existing $existing.webhooks -}}{{ (index $existing.webhooks 0).clientConfig.caBundle | default "" }}{{- end -}}
{{- end -}}
{{- /* Registry access shared by the webhook and the operator: plain-HTTP hosts and a private CA. */ -}}
{{- define "sg.plainHttpRegistries" -}}
{{- range (concat .Values.registries.plainHttp .Values.operator.plainHttpRegistries | uniq) }}
- {{ . }}
{{- end }}
{{- end -}}
{{- define "sg.registryCAMount" -}}
{{- if .Values.registries.caConfigMap }}
- {name: registry-ca, mountPath: /etc/samplerguard/registry-ca, readOnly: true}
{{- end }}
{{- end -}}
{{- define "sg.registryCAVolume" -}}
{{- if .Values.registries.caConfigMap }}
- name: registry-ca
  configMap:
    name: {{ .Values.registries.caConfigMap }}
    items: [{key: {{ .Values.registries.caKey }}, path: ca.crt}]
{{- end }}
{{- end -}}

{{/* The distinct PersistentVolumeClaims holding the verifier's reference models (JSON list). */}}
{{- define "sg.referenceClaims" -}}
{{- $claims := list -}}
{{- range .Values.verifier.references -}}
{{- $claims = append $claims .claimName -}}
{{- end -}}
{{- $claims | uniq | toJson -}}
{{- end -}}
