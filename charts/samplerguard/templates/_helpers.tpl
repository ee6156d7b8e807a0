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
{{- /* Seconds in a duration value: (list "key.path" value). Durations are written as in
policies ("30s", "10m", "1h30m", "72h", "90d"); a bare number still reads as seconds. Anything
else fails the render with the key's name. */ -}}
{{- define "sg.seconds" -}}
{{- $key := index . 0 -}}{{- $v := toString (index . 1) | trim -}}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?$" $v -}}{{ $v | float64 }}
{{- else if and (le (len $v) 32) (regexMatch "^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h|d))+$" $v) -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h|d)" $v -1 -}}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" . | float64 -}}
{{- $total = addf $total (mulf $n (get $units (regexReplaceAll "^[0-9.]+" . ""))) -}}
{{- end -}}
{{- $total -}}
{{- else -}}
{{- fail (printf "%s: %q is not a duration; write it as in policies, e.g. 30s, 10m, 72h or 1h30m" $key $v) -}}
{{- end -}}
{{- end -}}
{{- /* A duration value checked, as the flag takes it: (list "key.path" value). */ -}}
{{- define "sg.duration" -}}
{{- $_ := include "sg.seconds" . -}}{{ toString (index . 1) | trim }}
{{- end -}}
{{- /* Keys that were renamed when durations took one format: a values file still setting one
fails the render, naming the new key, instead of being silently ignored. */ -}}
{{- define "sg.renamedValues" -}}
{{- $renamed := dict
  "operator.auditIntervalSeconds" (list .Values.operator.auditIntervalSeconds "operator.auditInterval")
  "operator.certCheckSeconds" (list .Values.operator.certCheckSeconds "operator.certCheck")
  "webhook.timeoutSeconds" (list .Values.webhook.timeoutSeconds "webhook.timeout")
  "webhook.deadlineSeconds" (list .Values.webhook.deadlineSeconds "webhook.deadline")
  "webhook.freshTtlSeconds" (list .Values.webhook.freshTtlSeconds "webhook.freshTtl")
  "webhook.lastKnownGoodTtlSeconds" (list .Values.webhook.lastKnownGoodTtlSeconds "webhook.lastKnownGoodTtl")
-}}
{{- range $old, $pair := $renamed -}}
{{- if not (kindIs "invalid" (index $pair 0)) -}}
{{- fail (printf "%s was renamed %s, which takes a duration such as 30s, 10m or 1h (here %s: %vs)" $old (index $pair 1) (index $pair 1) (index $pair 0)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
