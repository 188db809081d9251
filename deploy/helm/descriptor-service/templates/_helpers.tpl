{{/* Names and labels. */}}
{{- define "descriptor-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "descriptor-service.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "descriptor-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "descriptor-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "descriptor-service.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "descriptor-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "descriptor-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "descriptor-service.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "descriptor-service.secretName" -}}
{{- default (printf "%s-secrets" (include "descriptor-service.fullname" .)) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "descriptor-service.tlsMountPath" -}}/etc/descriptor/tls{{- end -}}

{{/*
The server's config file: .Values.config with the keys the chart owns set over it:
the listen addresses from .Values.ports, grpc.drain from .Values.drainSeconds, the TLS
files and, for each .Values.secretFiles entry, its ...file key pointing at the mounted
Secret key.
*/}}
{{- define "descriptor-service.config" -}}
{{- $config := deepCopy (default dict .Values.config) -}}
{{- $grpc := dict "addr" (printf "0.0.0.0:%v" .Values.ports.grpc) "healthaddr" (printf "0.0.0.0:%v" .Values.ports.health) "drain" (printf "%vs" .Values.drainSeconds) -}}
{{- if .Values.tls.secretName -}}
{{- $tls := dict "certificate" (printf "%s/tls.crt" (include "descriptor-service.tlsMountPath" .)) "key" (printf "%s/tls.key" (include "descriptor-service.tlsMountPath" .)) -}}
{{- if .Values.tls.clientCA -}}
{{- $_ := set $tls "clientcas" (list (printf "%s/ca.crt" (include "descriptor-service.tlsMountPath" .))) -}}
{{- end -}}
{{- $_ := set $grpc "tls" $tls -}}
{{- end -}}
{{- $owned := dict "grpc" $grpc -}}
{{- if .Values.ports.metrics -}}
{{- $_ := set $owned "http" (dict "debug" (dict "addr" (printf "0.0.0.0:%v" .Values.ports.metrics))) -}}
{{- else -}}
{{- $_ := set $owned "http" (dict "debug" (dict "addr" "" "prometheus" (dict "enabled" false))) -}}
{{- end -}}
{{- range .Values.secretFiles -}}
{{- $node := printf "%s/%s" $.Values.secretMountPath .secretKey -}}
{{- range reverse (splitList "." .configKey) -}}
{{- $node = dict . $node -}}
{{- end -}}
{{- $owned = mergeOverwrite $owned $node -}}
{{- end -}}
{{- toYaml (mergeOverwrite $config $owned) -}}
{{- end -}}

{{/* The filesystem backend's root, when that backend is configured. */}}
{{- define "descriptor-service.registryRoot" -}}
{{- $storage := default dict .Values.config.storage -}}
{{- if hasKey $storage "filesystem" -}}
{{- $fs := default dict $storage.filesystem -}}
{{- default "./data" $fs.rootdirectory -}}
{{- end -}}
{{- end -}}

{{- define "descriptor-service.deleteEnabled" -}}
{{- $storage := default dict .Values.config.storage -}}
{{- $delete := default dict $storage.delete -}}
{{- if $delete.enabled -}}true{{- end -}}
{{- end -}}

{{/*
The cache kind the server will use (the server's default is the in-memory cache).
*/}}
{{- define "descriptor-service.cacheKind" -}}
{{- $storage := default dict .Values.config.storage -}}
{{- $cache := default dict $storage.cache -}}
{{- default "inmemory" $cache.blobdescriptor -}}
{{- end -}}

{{/*
Refuse values that render a broken deployment, each message naming the values.
*/}}
{{- define "descriptor-service.validate" -}}
{{- $kind := include "descriptor-service.cacheKind" . -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if and (gt $replicas 1) (eq $kind "inmemory") (include "descriptor-service.deleteEnabled" .) -}}
{{- fail (printf "replicaCount=%d with config.storage.cache.blobdescriptor=inmemory and config.storage.delete.enabled=true: a Clear reaches one pod's in-memory cache only, and the other pods would keep answering the deleted blob; set config.storage.cache.blobdescriptor=redis (with config.redis.addrs), replicaCount=1, or config.storage.delete.enabled=false" $replicas) -}}
{{- end -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "string" $pdb.minAvailable)) -}}
{{- if ge (int $pdb.minAvailable) $replicas -}}
{{- fail (printf "podDisruptionBudget.minAvailable=%d with replicaCount=%d: no pod could ever be evicted and kubectl drain would block; lower podDisruptionBudget.minAvailable, raise replicaCount, or use podDisruptionBudget.maxUnavailable" (int $pdb.minAvailable) $replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
