{{/* What both Deployments' pods share. Argument: (list $ "component" .Values.<component>). */}}
{{- define "keyward.podSpec" -}}
{{- $root := index . 0 }}{{ $c := index . 1 }}{{ $v := index . 2 -}}
serviceAccountName: keyward-{{ $c }}
# Replicas on different nodes, and zones where there are several.
topologySpreadConstraints:
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "keyward.selector" $c | nindent 6 }}
  matchLabelKeys: [pod-template-hash]
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "keyward.selector" $c | nindent 6 }}
  matchLabelKeys: [pod-template-hash]
securityContext:
  runAsNonRoot: true
  seccompProfile: {type: RuntimeDefault}
{{- with $v.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "keyward.containerCommon" -}}
{{- $root := index . 0 }}{{ $v := index . 1 -}}
image: {{ include "keyward.image" $root }}
{{- with $root.Values.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
livenessProbe:
  httpGet: {path: /healthz, port: health}
readinessProbe:
  httpGet: {path: /readyz, port: health}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
resources: {{- toYaml $v.resources | nindent 2 }}
{{- end -}}

{{- define "keyward.podMetadata" -}}
{{- $c := index . 0 }}{{ $v := index . 1 -}}
labels:
  {{- include "keyward.selector" $c | nindent 2 }}
{{- with $v.podAnnotations }}
annotations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
